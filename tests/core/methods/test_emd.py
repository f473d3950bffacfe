"""EMD correctness tests (docs/methods.md#emd-tests); the Langevin target is checked in test_emd_langevin.py and the
plug-in contract in test_emd_plumbing.py.

All seeded and CPU-only. The K = 1 identity, the variance tests and the Langevin bookkeeping test run a float64 copy
of the network teacher (`mlp_teacher64`), so the method draws float64 noise; the gradient-direction tests use the
analytic ring (float64).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from core.denoisers import Denoiser
from core.gmm import GaussianMixture, GMMDenoiser
from core.method_specs import WEIGHTINGS_VSD, DiffInstructConfig, EMDConfig
from core.methods.diff_instruct import DiffInstruct
from core.methods.emd import EMD, eps_tilde
from core.schedules import CosineSchedule

from . import helpers as h
from .conftest import dsm_fitted_ring, shifted_mixture

F64 = torch.float64
SCHED = CosineSchedule()


def _flat_grad(loss: torch.Tensor, module: nn.Module) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(module.parameters()))
    return torch.cat([g.flatten() for g in grads])


def _inputs(b: int, seed: int = 0, t_lo: float = 0.02, t_hi: float = 0.98):
    """Injected (xi, eps_0, t), float64, t per example."""
    gen = torch.Generator().manual_seed(seed)
    xi = torch.randn(b, 2, generator=gen, dtype=F64)
    eps0 = torch.randn(b, 2, generator=gen, dtype=F64)
    t = t_lo + (t_hi - t_lo) * torch.rand(b, generator=gen, dtype=F64)
    return xi, eps0, t


class _OutputShift(Denoiser):
    """A(z, t) = base(z, t) + shift: a small, constant, non-zero Delta = -(alpha/sigma^2) shift against base."""

    def __init__(self, base: Denoiser, shift: float):
        super().__init__(base.schedule, base.data_shape, base.num_classes)
        self.base = base
        self.shift = shift

    def forward(self, z_t, t, cond=None):
        return self.base(z_t, t, cond) + self.shift


class _ParamGMM(GMMDenoiser):
    """The exact mixture denoiser plus one unused float64 parameter: a Method reads its noise dtype from the
    teacher's parameters, copies the teacher into G, and builds Adam over A's parameters."""

    def __init__(self, mixture: GaussianMixture):
        super().__init__(mixture, SCHED)
        self.anchor = nn.Parameter(torch.zeros((), dtype=F64))


class _FixedSamples(Denoiser):
    """A 'student' whose output is a learnable tensor of fixed samples: d L / d(parameter) = d L / d x.

    The `0 * z_t` term keeps a (zero) graph to the input, so the xi-VJP of the Langevin step is defined."""

    def __init__(self, x: torch.Tensor):
        super().__init__(SCHED, (x.shape[1],))
        self.x = nn.Parameter(x.clone())

    def forward(self, z_t, t, cond=None):
        assert z_t.shape == self.x.shape
        return self.x + 0 * z_t


# ================================================================================================================
# The E-step against its update written out directly (docs/methods.md#e-step)
# ================================================================================================================

def test_langevin_matches_direct_recursion_and_eps_tilde_modes(mlp_teacher64):
    """drift + noise == eps_K of the plain recursion eps <- eps + g_e (sigma Delta - eps) + sqrt(2 g_e) n_eps,
    xi <- xi + g_z (alpha J^T Delta - xi) + sqrt(2 g_z) n_xi (draw order n_eps, n_xi per step), and each buffer
    follows its own recursion; then the three noise_cancel modes read the buffers as docs/methods.md#noise-cancellation says."""
    k, ge, gz = 3, 0.1, 0.02
    m = h.make_emd(mlp_teacher64, aux=h.perturbed(mlp_teacher64), langevin_steps=k, gamma_eps=ge, gamma_z=gz)
    m.student = m.nets["student"] = h.perturbed(mlp_teacher64, scale=0.02, seed=1)  # G != T, so J_G is not T's
    xi0, eps0, t = _inputs(32, seed=3)
    m.generator.manual_seed(11)
    chain = m.e_step(xi0, eps0, t, None)

    gen = torch.Generator().manual_seed(11)
    a, s = SCHED.alpha(t)[:, None], SCHED.sigma(t)[:, None]
    eps, xi, drift, noise = eps0.clone(), xi0.clone(), torch.zeros_like(eps0), eps0.clone()
    for _ in range(k):
        xi_k = xi.detach().requires_grad_(True)
        x = m.student(xi_k, m.t_gen.expand(32), None)
        z = a * x.detach() + s * eps
        with torch.no_grad():
            delta = a / s**2 * (mlp_teacher64(z, t) - m.aux(z, t))
        (vjp,) = torch.autograd.grad(x, xi_k, grad_outputs=delta)
        n_eps = torch.randn(eps.shape, generator=gen, dtype=F64)
        n_xi = torch.randn(xi.shape, generator=gen, dtype=F64)
        eps = eps + ge * (s * delta - eps) + math.sqrt(2 * ge) * n_eps
        drift = (1 - ge) * drift + ge * s * delta
        noise = (1 - ge) * noise + math.sqrt(2 * ge) * n_eps
        xi = (xi + gz * (a * vjp - xi) + math.sqrt(2 * gz) * n_xi).detach()
    torch.testing.assert_close(chain.drift + chain.noise, eps, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chain.drift, drift, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(chain.noise, noise, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(chain.xi, xi, rtol=1e-12, atol=1e-12)
    assert torch.equal(chain.eps0, eps0)
    # w(t) ("dmd") from the chain's initial state: (sigma^2/alpha^2) / mean|G(xi_0) - T(z_t^(0))| (docs/methods.md#m-step).
    with torch.no_grad():
        x0 = m.student(xi0, m.t_gen.expand(32), None)
        w0 = (s / a).pow(2)[:, 0] / (x0 - mlp_teacher64(a * x0 + s * eps0, t)).abs().mean(1)
    torch.testing.assert_close(chain.weight, w0, rtol=1e-12, atol=0)
    assert float(chain.drift.abs().max()) > 1e-3 and float((chain.xi - xi0).abs().max()) > 1e-3  # both moved

    assert torch.equal(eps_tilde(chain, "exact", ge, k), chain.drift)
    torch.testing.assert_close(eps_tilde(chain, "injected", ge, k), drift + (1 - ge) ** k * eps0, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(eps_tilde(chain, "none", ge, k), eps, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="noise_cancel"):
        eps_tilde(chain, "partial", ge, k)


def test_generator_loss_is_the_m_step_formula(mlp_teacher64):
    """L_G = -mean_b w_b (alpha/sigma) <G(sg xi_K), sg eps_tilde>, w from the chain's initial state."""
    m = h.make_emd(mlp_teacher64, aux=h.perturbed(mlp_teacher64), langevin_steps=2, gamma_eps=0.1, gamma_z=0.01,
              weighting="unit")
    xi, eps0, t = _inputs(16, seed=4)
    m.generator.manual_seed(0)
    chain = m.e_step(xi, eps0, t, None)
    loss, x, e = m.generator_loss(chain, t, None)
    assert torch.equal(x, m.generate(chain.xi, None)) and x.requires_grad and not e.requires_grad
    expected = -(SCHED.alpha(t) / SCHED.sigma(t) * (x * chain.drift).sum(1)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    assert not chain.xi.requires_grad and chain.xi.grad_fn is None  # G(sg xi_K)


# ================================================================================================================
# Zero gradient at equality, the right direction away from it (emd with "exact")
# ================================================================================================================

def _shifted_ring_grad(mixture: GaussianMixture, delta, n: int = 4096, seed: int = 0, aux=None, **config) -> torch.Tensor:
    """dL_G/dx for x = exact samples of the ring shifted by delta; T = the analytic ring, A = the exact shifted
    denoiser (or `aux`)."""
    moved = shifted_mixture(mixture, delta)
    m = EMD(_ParamGMM(mixture), EMDConfig(**config), total_steps=10, aux=_ParamGMM(moved) if aux is None else aux)
    assert m.dtype == F64
    gen = torch.Generator().manual_seed(seed)
    x = moved.sample(n, gen)
    m.student = m.nets["student"] = _FixedSamples(x)
    xi, eps0, t = _inputs(n, seed=seed + 1)
    m.generator.manual_seed(seed)
    chain = m.e_step(xi, eps0, t, None)
    loss, out, _ = m.generator_loss(chain, t, None)
    assert torch.equal(out, x)
    (g,) = torch.autograd.grad(loss, m.student.x)
    return g


@pytest.mark.parametrize("config", [{}, {"langevin_steps": 1, "gamma_eps": 1.0, "gamma_z": 0.0},
                                    {"weighting": "unit", "gamma_z": 0.0}])
def test_emd_gradient_zero_at_equality(ring_mixture, config):
    g = _shifted_ring_grad(ring_mixture, (0.0, 0.0), noise_cancel="exact", **config)
    assert float(g.abs().max()) <= 1e-12


@pytest.mark.parametrize("delta", [(0.3, 0.0), (0.0, -0.3), (-0.2, 0.2)])
@pytest.mark.parametrize("weighting", ["dmd", "unit"])
def test_emd_update_moves_samples_toward_teacher(ring_mixture, delta, weighting):
    g = _shifted_ring_grad(ring_mixture, delta, noise_cancel="exact", weighting=weighting)
    h.assert_update_toward_teacher(g, delta)  # samples at the teacher's ring + delta: the update points back


@pytest.mark.parametrize("weighting", ["dmd", "unit"])
def test_emd_gradient_small_with_dsm_trained_aux(ring_mixture, weighting):
    """The statistical check with A fitted by DSM on exact student samples: see
    helpers.assert_small_gradient_with_dsm_fitted_aux."""
    h.assert_small_gradient_with_dsm_fitted_aux(lambda delta: _shifted_ring_grad(
        ring_mixture, delta, aux=dsm_fitted_ring(delta), noise_cancel="exact", weighting=weighting))


def test_emd_generator_gradient_zero_at_initialisation(mlp_teacher):
    """G = A = T (network teacher copies), guidance 1: Delta = 0, so the first G gradient is exactly zero under "exact";
    under "none" the chain's noise alone gives a non-zero gradient (the zero is the cancellation's doing)."""
    for cancel in ("exact", "none"):
        m = h.make_emd(mlp_teacher, ttur_ratio=1, noise_cancel=cancel)
        xi, eps0, t = _inputs(64, seed=2)
        xi, eps0 = xi.float(), eps0.float()  # the network teacher is float32
        m.generator.manual_seed(0)
        chain = m.e_step(xi, eps0, t, None)
        loss, _, _ = m.generator_loss(chain, t, None)
        grads = torch.autograd.grad(loss, list(m.student.parameters()))
        zero = all(torch.equal(gr, torch.zeros_like(gr)) for gr in grads)
        m.generator.manual_seed(0)
        metrics = m.train_step(h.batch(0))
        if cancel == "exact":
            assert torch.equal(chain.drift, torch.zeros_like(chain.drift))
            assert zero and metrics["grad_norm/gen"] == 0.0 and metrics["loss/gen"] == 0.0
        else:
            assert not zero and metrics["grad_norm/gen"] > 0.0


# ================================================================================================================
# EMD with K = 1, gamma_eps = 1, gamma_z = 0, "exact" == Diff-Instruct
# ================================================================================================================

@pytest.mark.parametrize("weighting", WEIGHTINGS_VSD)
def test_emd_k1_equals_diff_instruct(mlp_teacher64, weighting):
    aux = h.perturbed(mlp_teacher64)  # the same A for all three; nothing is stepped here
    di = DiffInstruct(mlp_teacher64, DiffInstructConfig(weighting=weighting), total_steps=10, aux=aux)
    xi, eps0, t = _inputs(64, seed=5)
    loss_di, x_di = di.generator_loss(xi, eps0, t, None)
    g_di = _flat_grad(loss_di, di.student)
    assert g_di.dtype == F64 and float(g_di.norm()) > 1e-3  # a real, non-zero gradient

    out = {}
    for gamma in (1.0, 0.5):
        m = h.make_emd(mlp_teacher64, aux=aux, langevin_steps=1, gamma_eps=gamma, gamma_z=0.0, noise_cancel="exact",
                  weighting=weighting)
        m.generator.manual_seed(123)  # the chain's one noise draw; "exact" must not depend on it
        chain = m.e_step(xi, eps0, t, None)
        loss, x, _ = m.generator_loss(chain, t, None)
        assert torch.equal(x, x_di) and torch.equal(chain.xi, xi)
        out[gamma] = (loss, _flat_grad(loss, m.student))
    atol = 1e-13 * float(g_di.abs().max())
    torch.testing.assert_close(out[1.0][1], g_di, rtol=1e-8, atol=atol)
    torch.testing.assert_close(out[1.0][0], loss_di, rtol=1e-8, atol=0)
    torch.testing.assert_close(out[0.5][1], 0.5 * g_di, rtol=1e-8, atol=atol)
    torch.testing.assert_close(out[0.5][0], 0.5 * loss_di, rtol=1e-8, atol=0)


def test_emd_k1_equals_diff_instruct_through_train_step(mlp_teacher64):
    """Same identity through train_step: both methods draw xi, t, eps_0 in the same order, so with the same seed the
    first generator update sees the same inputs and gives the same loss, grad norm and updated student."""
    common = {"ttur_ratio": 1, "warmup": 0, "weighting": "dmd", **h.TOY}
    di = DiffInstruct(mlp_teacher64, DiffInstructConfig(**common), total_steps=10, aux=h.perturbed(mlp_teacher64))
    emd = h.make_emd(mlp_teacher64, aux=h.perturbed(mlp_teacher64), langevin_steps=1, gamma_eps=1.0, gamma_z=0.0,
                noise_cancel="exact", **common)
    metrics = []
    for m in (di, emd):
        m.generator.manual_seed(7)
        metrics.append(m.train_step(h.batch(0)))
    for key in ("loss/gen", "grad_norm/gen", "stats/x_mean", "stats/x_std"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], rel=1e-8, abs=1e-14), key
    assert metrics[0]["grad_norm/gen"] > 0.0
    for p, q in zip(di.student.parameters(), emd.student.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12)


# ================================================================================================================
# Noise cancellation cuts the gradient variance
# ================================================================================================================

def _gradients_over_draws(teacher, cancel: str, weighting: str, b: int, t_value: float, draws: int = 64) -> torch.Tensor:
    """[draws, n_params] G gradients with xi and t fixed, over draws of (eps_0, injected Langevin noise)."""
    aux = _OutputShift(copy.deepcopy(teacher).requires_grad_(True), 0.05)
    m = h.make_emd(teacher, aux=aux, langevin_steps=4, gamma_eps=0.1, gamma_z=0.0, noise_cancel=cancel, weighting=weighting)
    xi = torch.randn(b, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.full((b,), t_value, dtype=F64)
    rows = []
    for r in range(draws):
        eps0 = torch.randn(b, 2, generator=torch.Generator().manual_seed(100 + r), dtype=F64)
        m.generator.manual_seed(1000 + r)
        chain = m.e_step(xi, eps0, t, None)
        assert torch.equal(chain.xi, xi)  # gamma_z = 0: xi stays put
        loss, _, _ = m.generator_loss(chain, t, None)
        rows.append(_flat_grad(loss, m.student))
    return torch.stack(rows)


def test_emd_noise_cancellation_cuts_variance_and_keeps_the_mean(mlp_teacher64):
    """Weighting "unit": w does not depend on eps_0, so with gamma_z = 0 the M-step gradient is linear in eps_tilde and
    "none" - "exact" = a linear map of zeta_K, which has mean zero: the means must agree. (Here Delta is the constant
    -0.05 alpha/sigma^2, so the "exact" gradient is deterministic up to rounding.)

    Mean check on the projections onto 8 fixed random directions, with paired draws (the same eps_0 and Langevin
    noise feed both modes): a per-element 3-SE test over ~6.5k correlated gradient entries would flag ~0.3% of them by
    chance, while 8 near-Gaussian projections give a small, seed-fixed family-wise false-alarm rate. The signal
    (the "exact" mean) is 3-11 SE in these projections, so a biased cancellation (e.g. a rescaled drift) fails."""
    draws = 64
    g = {c: _gradients_over_draws(mlp_teacher64, c, "unit", b=512, t_value=0.2, draws=draws) for c in ("none", "exact")}
    var = {c: float(v.var(0).sum()) for c, v in g.items()}
    assert var["none"] > 10 * var["exact"], var
    proj = torch.randn(g["none"].shape[1], 8, generator=torch.Generator().manual_seed(7), dtype=F64)
    diff = (g["none"] - g["exact"]) @ proj
    z = diff.mean(0) / (diff.std(0) / math.sqrt(draws))
    assert bool((z.abs() < 3).all()), z
    signal = (g["exact"] @ proj).mean(0) / ((g["none"] @ proj).std(0) / math.sqrt(draws))
    assert float(signal.abs().max()) > 5, signal  # the check has power: the mean is resolved


def test_emd_noise_cancellation_cuts_variance_with_dmd_weighting(mlp_teacher64):
    """The default "dmd" weighting: variance ratio only. Its w is computed from the chain's initial z_t, i.e. from
    eps_0, so E[w zeta_K] != 0 and "none" is not an unbiased twin of "exact" here (measured: up to ~6 SE over 1024
    draws); the mean claim is tested with the eps_0-free weighting above."""
    g = {c: _gradients_over_draws(mlp_teacher64, c, "dmd", b=256, t_value=0.3) for c in ("none", "exact")}
    var = {c: float(v.var(0).sum()) for c, v in g.items()}
    assert var["exact"] > 0.0  # non-degenerate here: w varies with eps_0
    assert var["none"] > 10 * var["exact"], var
