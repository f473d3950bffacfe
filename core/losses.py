"""Shared losses as pure functions: tensors in, a tensor out, no module state (docs/methods.md#time-sampling-and-weights,
docs/methods.md#diff-instruct, docs/methods.md#dmd2-losses).

Inner products <a, b> sum over non-batch dimensions and return one value per example; the method reduces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> per example: [B, ...] x [B, ...] -> [B]."""
    assert a.shape == b.shape, f"inner: shapes {tuple(a.shape)} and {tuple(b.shape)} differ"
    return (a * b).flatten(1).sum(1)


def sum_sq(a: torch.Tensor) -> torch.Tensor:
    """||a||^2 per example."""
    return a.pow(2).flatten(1).sum(1)


def dmd_normaliser(x: torch.Tensor, x_real: torch.Tensor) -> torch.Tensor:
    """DMD's adaptive weight 1 / mean|x - D_T(z_t)| per example, detached, in float32 or wider [paper, DMD eq. 8]."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return 1.0 / (x.detach().to(dtype) - x_real.detach().to(dtype)).abs().flatten(1).mean(1)


def dmd_gradient(x: torch.Tensor, x_real: torch.Tensor, x_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """g = (x_fake - x_real) / mean|x - x_real| per example; NaN/inf entries become 0 and are counted [code] (the
    count a tensor on g's device: reading it would stall every iteration)."""
    assert x.shape == x_real.shape == x_fake.shape, "dmd_gradient: x, x_real and x_fake must have one shape"
    norm = dmd_normaliser(x, x_real)
    g = (x_fake.to(norm.dtype) - x_real.to(norm.dtype)) * norm.reshape(-1, *([1] * (x.ndim - 1)))
    bad = ~torch.isfinite(g)
    count = bad.sum()
    return torch.where(bad, torch.zeros_like(g), g), count


def dm_loss(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """L_DM = 1/2 mean((x - sg(x - g))^2) over all elements, so dL/dx = g / numel [code]."""
    assert x.shape == g.shape, f"dm_loss: shapes {tuple(x.shape)} and {tuple(g.shape)} differ"
    target = (x.detach().to(torch.promote_types(x.dtype, g.dtype)) - g).to(x.dtype)  # float64 x must not round via fp32
    return 0.5 * F.mse_loss(x, target, reduction="mean")


def gan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss softplus(-H(fake)), batch mean."""
    return F.softplus(-fake_logits).mean()


def gan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(H(fake)) + softplus(-H(real)), batch mean."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def fake_score_loss(x_hat: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted denoising loss of the auxiliary/fake-score network: mean_b[w_b * mean((x_hat - sg x)^2)]."""
    assert x_hat.shape == x.shape, f"fake_score_loss: shapes {tuple(x_hat.shape)} and {tuple(x.shape)} differ"
    per_example = (x_hat - x.detach()).pow(2).flatten(1).mean(1)
    return (weight.to(per_example.dtype) * per_example).mean()


def vsd_weight(kind: str, alpha: torch.Tensor, sigma: torch.Tensor, x: torch.Tensor, x_real: torch.Tensor) -> torch.Tensor:
    """w(t) of the EMD / Diff-Instruct generator loss (docs/methods.md#m-step), per example, detached, float64.

    "dmd": (sigma^2/alpha^2) / mean|x - T_g(z_t)|, which turns the K = 1 update into DMD's normalised gradient;
    "unit": 1; "inv-snr": sigma^2 / alpha^2.
    """
    inv_snr = (sigma.double() / alpha.double()) ** 2
    if kind == "unit":
        return torch.ones_like(inv_snr)
    if kind == "inv-snr":
        return inv_snr
    if kind == "dmd":
        return inv_snr * dmd_normaliser(x, x_real).double()
    raise ValueError(f"weighting must be one of dmd, unit, inv-snr, got {kind!r}")
