"""The denoiser interface and its adapters (docs/methods.md#the-denoiser-and-its-conversions,
docs/methods.md#guidance; the tests are listed in docs/methods.md#shared-math-tests)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from core.denoisers import (
    PREDICTION_TYPES,
    CFGDenoiser,
    NetworkDenoiser,
    VEDenoiser,
    diffusers_denoiser,
    eps_from_x,
    from_x,
    nfe_per_call,
    score,
    to_x,
    v_from_x,
    x_from_eps,
    x_from_flow,
    x_from_v,
)
from core.gmm import GaussianMixture, GMMDenoiser, ring
from core.schedules import CosineSchedule

F64 = torch.float64
# Conversions and adapters are exact algebra evaluated in float64 with O(1) inputs and coefficients bounded
# by 1/min(alpha, sigma) ~ 64 on t in [0.01, 0.99]: round-off is ~1e-13, so 1e-10 only fails on a real error.
TOL = 1e-10


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(n: int = 64, dim: int = 2, seed: int = 0, t_lo: float = 0.01, t_hi: float = 0.99):
    """z, t with z drawn around the ring's scale (radius 2) and t uniform in [t_lo, t_hi]."""
    g = _gen(seed)
    z = 2.0 * torch.randn(n, dim, generator=g, dtype=F64)
    t = t_lo + (t_hi - t_lo) * torch.rand(n, generator=g, dtype=F64)
    return z, t


def class_ring() -> GaussianMixture:
    """The analytic ring's class-conditional variant: 8 modes on the ring, alternately class 0 and class 1 (2 classes x 4 modes)."""
    base = ring(8)
    return GaussianMixture(base.means, base.stds, base.weights, classes=torch.arange(8) % 2)


# -- Parametrisation conversions --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(32, 2), (8, 2, 3, 3)])
def test_conversions_round_trip(shape):
    g = _gen(1)
    s = CosineSchedule()
    t = 0.01 + 0.98 * torch.rand(shape[0], generator=g, dtype=F64)
    a, sg = s.alpha(t), s.sigma(t)
    z = torch.randn(shape, generator=g, dtype=F64)
    x = torch.randn(shape, generator=g, dtype=F64)
    torch.testing.assert_close(x_from_eps(z, eps_from_x(z, x, a, sg), a, sg), x, rtol=0, atol=TOL)
    torch.testing.assert_close(x_from_v(z, v_from_x(z, x, a, sg), a, sg), x, rtol=0, atol=TOL)
    for pt in PREDICTION_TYPES:
        torch.testing.assert_close(to_x(pt, z, from_x(pt, z, x, a, sg), a, sg), x, rtol=0, atol=TOL)
    # The targets themselves follow the definitions eps = (z - a x)/s and v = a eps - s x.
    bc = (-1,) + (1,) * (len(shape) - 1)
    eps = (z - a.view(bc) * x) / sg.view(bc)
    torch.testing.assert_close(from_x("epsilon", z, x, a, sg), eps, rtol=0, atol=TOL)
    torch.testing.assert_close(from_x("v_prediction", z, x, a, sg), a.view(bc) * eps - sg.view(bc) * x,
                               rtol=0, atol=TOL)


def test_unknown_prediction_type_raises():
    z = torch.zeros(2, 2, dtype=F64)
    a = s = torch.full((2,), math.sqrt(0.5), dtype=F64)
    with pytest.raises(ValueError):
        to_x("flow", z, z, a, s)
    with pytest.raises(ValueError):
        from_x("flow", z, z, a, s)
    with pytest.raises(ValueError):
        NetworkDenoiser(nn.Identity(), CosineSchedule(), "flow", (2,))
    with pytest.raises(ValueError):
        NetworkDenoiser(nn.Identity(), CosineSchedule(), "sample", (2,), time_input="t")


def test_x_from_flow_recovers_x():
    s = CosineSchedule()
    z, t = _batch(seed=2)
    x = torch.randn(z.shape, generator=_gen(3), dtype=F64)
    a, sg = s.alpha(t), s.sigma(t)
    eps = eps_from_x(z, x, a, sg)
    tau = (sg / (a + sg))[:, None]
    y = z / (a + sg)[:, None]
    # The flow interpolant y = (1 - tau) x + tau eps is the rescaled VP point.
    torch.testing.assert_close(y, (1 - tau) * x + tau * eps, rtol=0, atol=TOL)
    torch.testing.assert_close(x_from_flow(z, eps - x, a, sg), x, rtol=0, atol=TOL)


# -- The analytic teacher wrapped in every parametrisation -----------------------------------------------

class NativeGMMNet(nn.Module):
    """A 'network' whose native output is the GMM's exact x0 converted to `prediction_type`."""

    def __init__(self, gmm: GMMDenoiser, prediction_type: str):
        super().__init__()
        self.gmm, self.prediction_type = gmm, prediction_type

    def forward(self, z, time, cond):
        s = self.gmm.schedule
        t = time.double() / s.timestep_scale  # model_time = t * scale for the cosine schedule
        return from_x(self.prediction_type, z, self.gmm(z, t, cond), s.alpha(t), s.sigma(t))


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_network_denoiser_gives_back_gmm(prediction_type):
    s = CosineSchedule()
    gmm = GMMDenoiser(ring(), s)
    wrapped = NetworkDenoiser(NativeGMMNet(gmm, prediction_type), s, prediction_type, (2,))
    z, t = _batch(seed=4)
    torch.testing.assert_close(wrapped(z, t), gmm(z, t), rtol=0, atol=TOL)


def test_ve_denoiser_gives_back_gmm():
    s = CosineSchedule()
    gmm = GMMDenoiser(ring(), s)

    def ve_fn(y, sigma_bar, cond):
        # D_ve(y; sigma_bar) of the VE process y = x + sigma_bar n, evaluated through the VP point it maps to.
        alpha = 1.0 / torch.sqrt(1.0 + sigma_bar**2)
        t = s.t_from_log_snr(-2.0 * torch.log(sigma_bar))
        return gmm(y * alpha[:, None], t, cond)

    ve = VEDenoiser(ve_fn, s, (2,))
    z, t = _batch(seed=5)
    torch.testing.assert_close(ve(z, t), gmm(z, t), rtol=0, atol=TOL)


def _log_density(mixture: GaussianMixture, z: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
    """log p_t(z) of the noised mixture: component k is N(alpha mu_k, (alpha^2 w_k^2 + sigma^2) I)."""
    d = z.shape[1]
    var = alpha[:, None] ** 2 * mixture.stds[None, :] ** 2 + sigma[:, None] ** 2           # [B, K]
    sq = ((z[:, None, :] - alpha[:, None, None] * mixture.means[None]) ** 2).sum(-1)      # [B, K]
    logk = mixture.weights.log()[None] - 0.5 * sq / var - 0.5 * d * torch.log(2 * math.pi * var)
    return torch.logsumexp(logk, dim=1)


@pytest.mark.parametrize("weights,stds", [(None, None), ([0.96 / 7] * 7 + [0.04], [0.05, 0.1, 0.2, 0.4] * 2)])
def test_score_matches_autograd(weights, stds):
    s = CosineSchedule()
    mixture = ring(weights=weights)
    if stds is not None:  # unequal stds exercise the log-variance term of the responsibilities
        mixture = GaussianMixture(mixture.means, torch.tensor(stds, dtype=F64), mixture.weights)
    gmm = GMMDenoiser(mixture, s)
    z, t = _batch(n=128, seed=6, t_lo=0.05, t_hi=0.95)
    zg = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_log_density(mixture, zg, s.alpha(t), s.sigma(t)).sum(), zg)
    # Scores reach ~1e2 at t = 0.05 (variance ~0.016); both sides are exact in float64 to ~1e-12 relative.
    torch.testing.assert_close(score(gmm, z, t), grad, rtol=1e-8, atol=1e-8)


# -- Classifier-free guidance -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cond_gmm() -> GMMDenoiser:
    return GMMDenoiser(class_ring(), CosineSchedule())


def _cond_batch(seed=7, n=64):
    z, t = _batch(n=n, seed=seed, t_lo=0.05, t_hi=0.95)
    cond = torch.randint(0, 2, (n,), generator=_gen(seed + 100))
    return z, t, cond


def test_cfg_endpoints(cond_gmm):
    z, t, cond = _cond_batch()
    null = torch.full_like(cond, cond_gmm.num_classes)
    x_c, x_u = cond_gmm(z, t, cond), cond_gmm(z, t, null)
    assert (x_c - x_u).abs().max() > 1e-2, "fixture must make class information matter"
    # Same float64 row-wise arithmetic on both sides; only batch concatenation differs.
    torch.testing.assert_close(CFGDenoiser(cond_gmm, 1.0)(z, t, cond), x_c, rtol=0, atol=1e-12)
    torch.testing.assert_close(CFGDenoiser(cond_gmm, 0.0)(z, t, cond), x_u, rtol=0, atol=1e-12)
    # Unconditional calls ignore w.
    torch.testing.assert_close(CFGDenoiser(cond_gmm, 3.0)(z, t, None), x_u, rtol=0, atol=1e-12)


@pytest.mark.parametrize("w", [0.5, 2.0, 4.5])
def test_cfg_same_in_x_eps_v_space(cond_gmm, w):
    s = cond_gmm.schedule
    z, t, cond = _cond_batch(seed=8)
    a, sg = s.alpha(t), s.sigma(t)
    x_c = cond_gmm(z, t, cond)
    x_u = cond_gmm(z, t, torch.full_like(cond, cond_gmm.num_classes))
    guided = CFGDenoiser(cond_gmm, w)(z, t, cond)
    torch.testing.assert_close(guided, x_u + w * (x_c - x_u), rtol=0, atol=TOL)
    e_c, e_u = eps_from_x(z, x_c, a, sg), eps_from_x(z, x_u, a, sg)
    torch.testing.assert_close(x_from_eps(z, e_u + w * (e_c - e_u), a, sg), guided, rtol=0, atol=TOL)
    v_c, v_u = v_from_x(z, x_c, a, sg), v_from_x(z, x_u, a, sg)
    torch.testing.assert_close(x_from_v(z, v_u + w * (v_c - v_u), a, sg), guided, rtol=0, atol=TOL)


def test_cfg_needs_conditional_model_and_counts_nfe(cond_gmm):
    uncond = GMMDenoiser(ring(), CosineSchedule())
    with pytest.raises(ValueError):
        CFGDenoiser(uncond, 2.0)
    plain = CFGDenoiser(uncond, 1.0)  # w = 1 on an unconditional model is allowed: no guidance
    assert nfe_per_call(plain, conditional=False) == 1
    guided = CFGDenoiser(cond_gmm, 2.0)
    assert nfe_per_call(guided, conditional=True) == 2
    assert nfe_per_call(guided, conditional=False) == 1
    assert nfe_per_call(CFGDenoiser(cond_gmm, 1.0), conditional=True) == 1
    assert nfe_per_call(cond_gmm, conditional=True) == 1


# -- diffusers UNet adapter -------------------------------------------------------------------------------

def test_diffusers_unet_adapter():
    from core.nets import build_unet

    torch.manual_seed(0)
    unet = build_unet(8, 1, num_classes=3, block_out_channels=(8, 16), attention=False)
    # Random init leaves the class embedding random, so the label visibly changes the output below.
    den = diffusers_denoiser(unet, CosineSchedule(), "epsilon", num_classes=3).eval()
    assert den.data_shape == (1, 8, 8)
    g = _gen(9)
    z = torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=F64)
    with torch.no_grad():
        out_none = den(z, t)
        out_null = den(z, t, torch.full((4,), 3, dtype=torch.long))
        out_c0 = den(z, t, torch.zeros(4, dtype=torch.long))
    assert out_none.shape == z.shape
    assert torch.isfinite(out_none).all()
    assert torch.equal(out_none, out_null)  # identical inputs, same process: bit-identical
    assert not torch.allclose(out_none, out_c0), "class labels must reach the UNet"
