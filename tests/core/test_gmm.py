"""Gaussian mixtures and their exact denoiser (the analytic ring of docs/methods.md#fixtures)."""

from __future__ import annotations

import math

import pytest
import torch

from core.gmm import GaussianMixture, GMMDenoiser, grid, ring
from core.schedules import CosineSchedule

F64 = torch.float64
SKEWED = [0.96 / 7] * 7 + [0.04]  # the ring's rare-mode variant: the eighth mode has 4 % of the mass


def class_ring(weights=None) -> GaussianMixture:
    """8 modes on the ring, alternately class 0 and class 1 (2 classes x 4 modes)."""
    base = ring(8, weights=weights)
    return GaussianMixture(base.means, base.stds, base.weights, classes=torch.arange(8) % 2)


def _t_at_log_snr(lam: float) -> float:
    return float(CosineSchedule().t_from_log_snr(lam))


# -- the exact denoiser against a Monte-Carlo posterior mean ---------------------------------------------

def uneven_ring() -> GaussianMixture:
    """The skewed ring with unequal component stds, so the log-variance term of the responsibilities matters."""
    base = ring(weights=SKEWED)
    return GaussianMixture(base.means, torch.linspace(0.05, 0.4, 8, dtype=F64), base.weights)


@pytest.mark.parametrize("make", [lambda: ring(weights=SKEWED), uneven_ring], ids=["skewed", "uneven-std"])
@pytest.mark.parametrize("lam", [0.0, 2.0])
@pytest.mark.parametrize("z_point", [(0.0, 0.0), (1.2, 0.3), (-0.9, 1.4), (0.5, -1.5)])
def test_gmm_denoiser_equals_monte_carlo_posterior_mean(make, lam, z_point):
    s = CosineSchedule()
    mixture = make()
    t = torch.tensor([_t_at_log_snr(lam)], dtype=F64)
    alpha, sigma = float(s.alpha(t)), float(s.sigma(t))
    z = torch.tensor([z_point], dtype=F64)

    # Self-normalised importance sampling: x_i ~ p(x), weights N(z; alpha x_i, sigma^2 I).
    gen = torch.Generator().manual_seed(1234)
    x = mixture.sample(200_000, gen)
    logw = -0.5 * ((z - alpha * x) ** 2).sum(1) / sigma**2
    w = torch.softmax(logw, dim=0)
    est = (w[:, None] * x).sum(0)
    # Delta-method standard error of a self-normalised IS estimate: sqrt(sum_i w_i^2 (x_i - est)^2).
    se = torch.sqrt((w[:, None] ** 2 * (x - est) ** 2).sum(0))
    ess = 1.0 / float((w**2).sum())
    # The delta-method SE is trustworthy once the effective sample size is in the hundreds (the hardest case
    # here, z = 0 between wide modes at lambda = 2, has ESS ~360; the others are >= 14,000).
    assert ess > 300, f"importance sampling too degenerate (ESS {ess:.0f}) for the SE to be trusted"

    exact = GMMDenoiser(mixture, s)(z, t)[0]
    # 5 SE per coordinate: the estimate is asymptotically normal, so a correct D fails with probability ~6e-7
    # per check (and the seed is fixed); the SNIS bias is O(1/ESS), far below one SE.
    assert ((exact - est).abs() <= 5 * se).all(), f"exact {exact.tolist()} vs MC {est.tolist()} +- {se.tolist()}"


def test_gmm_denoiser_endpoints():
    s = CosineSchedule()
    mixture = ring(weights=SKEWED)
    gmm = GMMDenoiser(mixture, s)
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    # t = 1: pure noise, the posterior mean is the data mean sum_k pi_k mu_k.
    data_mean = (mixture.weights[:, None] * mixture.means).sum(0)
    torch.testing.assert_close(gmm(z, torch.ones(16, dtype=F64)), data_mean.expand(16, 2), rtol=0, atol=1e-12)
    # t = 0: no noise, D(z) = z.
    torch.testing.assert_close(gmm(z, torch.zeros(16, dtype=F64)), z, rtol=0, atol=1e-12)


def test_gmm_denoiser_keeps_input_dtype():
    gmm = GMMDenoiser(ring(), CosineSchedule())
    z = torch.randn(8, 2)
    t = torch.full((8,), 0.4, dtype=F64)
    out = gmm(z, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, gmm(z.double(), t).float(), rtol=0, atol=0)


# -- class-conditional variant ----------------------------------------------------------------------------

def test_class_conditional_restricts_to_class_components():
    s = CosineSchedule()
    weights = torch.tensor([3, 1, 2, 5, 4, 1, 2, 2], dtype=F64)
    weights = weights / weights.sum()
    full = class_ring(weights)
    gmm = GMMDenoiser(full, s)
    assert gmm.num_classes == 2
    g = torch.Generator().manual_seed(3)
    z = 2 * torch.randn(64, 2, generator=g, dtype=F64)
    t = 0.05 + 0.9 * torch.rand(64, generator=g, dtype=F64)

    for c in range(2):
        keep = full.classes == c
        sub = GaussianMixture(full.means[keep], full.stds[keep], full.weights[keep] / full.weights[keep].sum())
        expected = GMMDenoiser(sub, s)(z, t)
        got = gmm(z, t, torch.full((64,), c, dtype=torch.long))
        # Same float64 formula restricted to the same components; only renormalisation round-off differs.
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)

    unconditional = GMMDenoiser(GaussianMixture(full.means, full.stds, full.weights), s)(z, t)
    torch.testing.assert_close(gmm(z, t, torch.full((64,), 2, dtype=torch.long)), unconditional, rtol=0, atol=1e-12)
    torch.testing.assert_close(gmm(z, t, None), unconditional, rtol=0, atol=1e-12)
    # A mixed batch picks per row.
    cond = torch.arange(64) % 3
    mixed = gmm(z, t, cond)
    for c in range(3):
        rows = cond == c
        torch.testing.assert_close(mixed[rows], gmm(z[rows], t[rows], cond[rows]), rtol=0, atol=1e-12)


def test_class_conditional_sampling():
    mixture = class_ring()
    n = 4000
    cond = torch.arange(n) % 3  # 0, 1 and the null class 2
    x = mixture.sample(n, torch.Generator().manual_seed(5), cond)
    nearest = torch.cdist(x, mixture.means).argmin(1)
    comp_class = mixture.classes[nearest]
    assert torch.equal(comp_class[cond == 0], torch.zeros_like(comp_class[cond == 0]))
    assert torch.equal(comp_class[cond == 1], torch.ones_like(comp_class[cond == 1]))
    # Null rows draw from the whole mixture: all 8 modes appear among ~1333 draws (miss prob ~ 8 * (7/8)^1333).
    assert set(nearest[cond == 2].tolist()) == set(range(8))


# -- sampling ---------------------------------------------------------------------------------------------

def test_sample_reproducible_with_seeded_generator():
    mixture = grid()
    a = mixture.sample(500, torch.Generator().manual_seed(11))
    b = mixture.sample(500, torch.Generator().manual_seed(11))
    c = mixture.sample(500, torch.Generator().manual_seed(12))
    assert a.dtype == F64 and a.shape == (500, 2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_component_statistics():
    mixture = ring(weights=SKEWED)
    n = 40_000
    x = mixture.sample(n, torch.Generator().manual_seed(7))
    # Modes are 1.53 apart and std 0.1: nearest-mean assignment errs only beyond 7.6 std (probability ~1e-14).
    comp = torch.cdist(x, mixture.means).argmin(1)
    for k in range(8):
        xk = x[comp == k]
        nk = xk.shape[0]
        p = float(mixture.weights[k])
        # Counts are binomial; means and stds have SEs std/sqrt(n_k) and std/sqrt(2 n_k).
        # 5 SE: a correct sampler fails each check with probability ~6e-7 (and the seed is fixed).
        assert abs(nk / n - p) <= 5 * math.sqrt(p * (1 - p) / n), f"mode {k}: share {nk / n} vs {p}"
        std = float(mixture.stds[k])
        assert ((xk.mean(0) - mixture.means[k]).abs() <= 5 * std / math.sqrt(nk)).all(), f"mode {k} mean"
        assert ((xk.std(0) - std).abs() <= 5 * std / math.sqrt(2 * nk)).all(), f"mode {k} std"


def test_mixture_validation():
    means = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError):
        GaussianMixture(means, torch.tensor([0.1, 0.0], dtype=F64), torch.tensor([0.5, 0.5], dtype=F64))
    with pytest.raises(ValueError):
        GaussianMixture(means, torch.tensor([0.1, 0.1], dtype=F64), torch.tensor([0.5, 0.6], dtype=F64))
    with pytest.raises(ValueError):
        GaussianMixture(means, torch.tensor([0.1], dtype=F64), torch.tensor([0.5, 0.5], dtype=F64))
