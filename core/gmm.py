"""Isotropic Gaussian mixtures and their exact denoiser (the analytic ring of docs/methods.md#fixtures).

Under the VP process component k has marginal N(alpha mu_k, (alpha^2 w_k^2 + sigma^2) I), so
  D(z_t, t) = sum_k r_k(z_t) [mu_k + alpha w_k^2 / (alpha^2 w_k^2 + sigma^2) (z_t - alpha mu_k)],
with responsibilities r_k from a log-sum-exp. Computed in float64 whatever the input dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.denoisers import Denoiser, bcast
from core.schedules import VPSchedule


@dataclass(frozen=True)
class GaussianMixture:
    means: torch.Tensor              # [K, d]
    stds: torch.Tensor               # [K]
    weights: torch.Tensor            # [K], sums to 1
    classes: torch.Tensor | None = None  # [K] class id of each component, for class-conditional use

    def __post_init__(self):
        k = self.means.shape[0]
        if self.stds.shape != (k,) or self.weights.shape != (k,):
            raise ValueError(f"mixture: stds and weights must have shape ({k},)")
        if not bool((self.stds > 0).all()):
            raise ValueError("mixture: stds must be > 0")
        if abs(float(self.weights.sum()) - 1.0) > 1e-9:
            raise ValueError("mixture: weights must sum to 1")

    @property
    def num_classes(self) -> int:
        return 0 if self.classes is None else int(self.classes.max()) + 1

    def sample(self, n: int, generator: torch.Generator, cond: torch.Tensor | None = None) -> torch.Tensor:
        """n float64 samples; with `cond`, each row drawn from its class's components."""
        logits = self._log_weights(cond, n)
        comp = torch.multinomial(logits.exp(), 1, generator=generator).squeeze(1)
        noise = torch.randn((n, self.means.shape[1]), generator=generator, dtype=torch.float64)
        return self.means.double()[comp] + self.stds.double()[comp, None] * noise

    def _log_weights(self, cond, batch):
        logw = self.weights.double().log().expand(batch, -1)
        if cond is None or self.classes is None:
            return logw
        cond = cond.to(self.classes.device)
        member = (self.classes[None, :] == cond[:, None]) | (cond[:, None] >= self.num_classes)
        return torch.where(member, logw, torch.full_like(logw, -math.inf))


def ring(n_modes: int = 8, radius: float = 2.0, std: float = 0.1, weights=None) -> GaussianMixture:
    angle = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    w = torch.full((n_modes,), 1.0 / n_modes, dtype=torch.float64) if weights is None \
        else torch.as_tensor(weights, dtype=torch.float64)
    return GaussianMixture(means, torch.full((n_modes,), std, dtype=torch.float64), w)


def grid(side: int = 5, spacing: float = 1.0, std: float = 0.1) -> GaussianMixture:
    ticks = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    means = torch.cartesian_prod(ticks, ticks)
    k = side * side
    return GaussianMixture(means, torch.full((k,), std, dtype=torch.float64), torch.full((k,), 1.0 / k, dtype=torch.float64))


class GMMDenoiser(Denoiser):
    """The exact posterior mean E[x | z_t, cond] of a Gaussian mixture; null class = whole mixture."""

    def __init__(self, mixture: GaussianMixture, schedule: VPSchedule):
        super().__init__(schedule, (mixture.means.shape[1],), mixture.num_classes)
        self.mixture = mixture

    def forward(self, z_t, t, cond=None):
        t = torch.as_tensor(t, dtype=torch.float64).expand(z_t.shape[0])
        z = z_t.double()
        alpha = bcast(self.schedule.alpha(t), z)          # [B, 1]
        sigma = bcast(self.schedule.sigma(t), z)
        mu = self.mixture.means.double().to(z.device)    # [K, d]
        w2 = self.mixture.stds.double().to(z.device) ** 2  # [K]
        var = alpha**2 * w2 + sigma**2                   # [B, K]
        diff = z[:, None, :] - alpha[:, :, None] * mu    # [B, K, d]
        d = z.shape[1]
        log_r = (self.mixture._log_weights(cond, z.shape[0]).to(z.device)
                 - 0.5 * (diff**2).sum(-1) / var - 0.5 * d * var.log())
        r = torch.softmax(log_r, dim=1)                  # [B, K]
        post = mu + (alpha * w2 / var)[:, :, None] * diff
        return (r[:, :, None] * post).sum(1).to(z_t.dtype)


def fit_to_mixture(net, mixture: GaussianMixture, *, steps: int, lr: float, batch: int = 256, t_lo: float = 1e-3,
                   seed: int = 0, cosine_decay: bool = False):
    """Regress a NetworkDenoiser's raw output onto the exact denoiser's, at noised mixture samples with t ~ U(t_lo, 1)
    (the network teacher of docs/methods.md#fixtures); seeded, in place, returns the net frozen and in eval mode."""
    from core.denoisers import from_x
    from core.posterior import marginal_sample

    sched = net.schedule
    exact = GMMDenoiser(mixture, sched)
    net.requires_grad_(True).train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine_decay else None
    for _ in range(steps):
        x = mixture.sample(batch, gen).float()
        t = t_lo + (1.0 - t_lo) * torch.rand(batch, generator=gen, dtype=torch.float64)
        z = marginal_sample(sched, x, t, torch.randn(batch, x.shape[1], generator=gen))
        with torch.no_grad():
            target = from_x(net.prediction_type, z, exact(z, t), sched.alpha(t), sched.sigma(t))
        loss = (net.raw(z, t) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if decay is not None:
            decay.step()
    return net.eval().requires_grad_(False)


def rms_vs_exact(den, mixture: GaussianMixture, *, n: int = 8192, t_lo: float = 1e-3, seed: int = 1) -> tuple[float, float]:
    """(per-coordinate RMS, RMS of the error vector's norm) of D(z_t, t) against the exact denoiser, at noised mixture
    samples with t ~ U(t_lo, 1): the network teacher's acceptance measure (< 0.05 per coordinate)."""
    from core.posterior import marginal_sample

    gen = torch.Generator().manual_seed(seed)
    x = mixture.sample(n, gen).float()
    t = t_lo + (1.0 - t_lo) * torch.rand(n, generator=gen, dtype=torch.float64)
    z = marginal_sample(den.schedule, x, t, torch.randn(n, x.shape[1], generator=gen))
    with torch.no_grad():
        err = den(z, t) - GMMDenoiser(mixture, den.schedule)(z, t)
    return float(err.pow(2).mean().sqrt()), float(err.pow(2).sum(1).mean().sqrt())
