"""Diff-Instruct / VSD correctness tests (docs/methods.md#diff-instruct-tests) and its plug-in contract.

The identity EMD with K = 1 == Diff-Instruct lives in test_emd.py. All seeded and CPU-only: the loss-formula test runs
a float64 copy of the network teacher (`mlp_teacher64`); the gradient-direction tests use the analytic ring (float64);
the plumbing tests the float32 network teacher (`mlp_teacher`).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.denoisers import Denoiser
from core.gmm import GaussianMixture, GMMDenoiser
from core.method_specs import WEIGHTINGS_VSD, DiffInstructConfig, build_method_config
from core.methods.diff_instruct import DiffInstruct
from core.nets import parameter_hash
from core.schedules import CosineSchedule

from . import helpers as h
from .conftest import dsm_fitted_ring, shifted_mixture

F64 = torch.float64
SCHED = CosineSchedule()
TOY = {"sigma_data": 1.42, "lr_gen": 1e-3, "lr_aux": 1e-3}  # the toy2d preset's knobs


# ================================================================================================================
# helpers (the EMD file has twins of these; the two files stay independent)
# ================================================================================================================


def _make(teacher, total_steps: int = 50, aux=None, **config) -> DiffInstruct:
    return DiffInstruct(teacher, DiffInstructConfig(**{**TOY, **config}), total_steps=total_steps, aux=aux)


def _inputs(b: int, seed: int = 0):
    """Injected (xi, eps, t), float64, t ~ U(0.02, 0.98) per example."""
    gen = torch.Generator().manual_seed(seed)
    xi = torch.randn(b, 2, generator=gen, dtype=F64)
    eps = torch.randn(b, 2, generator=gen, dtype=F64)
    return xi, eps, 0.02 + 0.96 * torch.rand(b, generator=gen, dtype=F64)


class _ParamGMM(GMMDenoiser):
    """The exact mixture denoiser plus one unused float64 parameter (Method reads its dtype from the teacher's
    parameters, copies the teacher into G and builds Adam over A's parameters)."""

    def __init__(self, mixture: GaussianMixture):
        super().__init__(mixture, SCHED)
        self.anchor = nn.Parameter(torch.zeros((), dtype=F64))


class _FixedSamples(Denoiser):
    """A 'student' whose output is a learnable tensor of fixed samples, so d L / d(parameter) = d L / d x."""

    def __init__(self, x: torch.Tensor):
        super().__init__(SCHED, (x.shape[1],))
        self.x = nn.Parameter(x.clone())

    def forward(self, z_t, t, cond=None):
        assert z_t.shape == self.x.shape
        return self.x + 0 * z_t


def _x_grad(m: DiffInstruct, x: torch.Tensor, xi, eps, t) -> torch.Tensor:
    m.student = m.nets["student"] = _FixedSamples(x)
    loss, out = m.generator_loss(xi, eps, t, None)
    assert torch.equal(out, x)
    (g,) = torch.autograd.grad(loss, m.student.x)
    return g


# ================================================================================================================
# The loss itself (docs/methods.md#diff-instruct)
# ================================================================================================================

@pytest.mark.parametrize("weighting", WEIGHTINGS_VSD)
def test_diff_instruct_generator_loss_formula_and_x_gradient(mlp_teacher64, weighting):
    """L_G = mean_b w (alpha^2/sigma^2) <G(xi), sg(A(z_t) - T(z_t))>, z_t = alpha sg G(xi) + sigma eps with the injected
    eps; so dL/dx = w (alpha^2/sigma^2)(A - T) / B exactly (no path through z_t, A or T)."""
    m = _make(mlp_teacher64, aux=h.perturbed(mlp_teacher64), weighting=weighting)
    m.student = m.nets["student"] = h.perturbed(mlp_teacher64, scale=0.02, seed=1)
    xi, eps, t = _inputs(64, seed=2)
    m.generator.manual_seed(0)
    state = m.generator.get_state()
    loss, x = m.generator_loss(xi, eps, t, None)
    assert torch.equal(m.generator.get_state(), state)  # Diff-Instruct draws nothing of its own
    a, s = SCHED.alpha(t)[:, None], SCHED.sigma(t)[:, None]
    with torch.no_grad():
        x_ref = m.student(xi, m.t_gen.expand(64), None)
        z = a * x_ref + s * eps
        x_real, x_fake = mlp_teacher64(z, t), m.aux(z, t)
    w = {"unit": torch.ones(64, dtype=F64), "inv-snr": (s / a).pow(2)[:, 0],
         "dmd": (s / a).pow(2)[:, 0] / (x_ref - x_real).abs().mean(1)}[weighting]
    coef = w * (a / s).pow(2)[:, 0]
    torch.testing.assert_close(x, x_ref, rtol=0, atol=0)
    torch.testing.assert_close(loss, (coef * (x_ref * (x_fake - x_real)).sum(1)).mean(), rtol=1e-12, atol=0)
    g = _x_grad(m, x_ref, xi, eps, t)
    torch.testing.assert_close(g, coef[:, None] * (x_fake - x_real) / 64, rtol=1e-12, atol=1e-15)


# ================================================================================================================
# Zero gradient at equality, the right direction away from it
# ================================================================================================================

def _shifted_ring_grad(mixture: GaussianMixture, delta, n: int = 4096, seed: int = 0, aux=None, **config) -> torch.Tensor:
    """dL_G/dx for x = exact samples of the ring shifted by delta; T = the analytic ring, A = the exact shifted
    denoiser (or `aux`)."""
    moved = shifted_mixture(mixture, delta)
    m = DiffInstruct(_ParamGMM(mixture), DiffInstructConfig(**config), total_steps=10, aux=_ParamGMM(moved) if aux is None else aux)
    assert m.dtype == F64
    x = moved.sample(n, torch.Generator().manual_seed(seed))
    return _x_grad(m, x, *_inputs(n, seed=seed + 1))


@pytest.mark.parametrize("weighting", WEIGHTINGS_VSD)
def test_diff_instruct_gradient_zero_at_equality(ring_mixture, weighting):
    g = _shifted_ring_grad(ring_mixture, (0.0, 0.0), weighting=weighting)
    assert float(g.abs().max()) <= 1e-12


@pytest.mark.parametrize("delta", [(0.3, 0.0), (0.0, -0.3), (-0.2, 0.2)])
@pytest.mark.parametrize("weighting", WEIGHTINGS_VSD)
def test_diff_instruct_update_moves_samples_toward_teacher(ring_mixture, delta, weighting):
    g = _shifted_ring_grad(ring_mixture, delta, weighting=weighting)
    h.assert_update_toward_teacher(g, delta)  # samples at the teacher's ring + delta: the update points back


@pytest.mark.parametrize("weighting", ["dmd", "unit"])
def test_diff_instruct_gradient_small_with_dsm_trained_aux(ring_mixture, weighting):
    """The statistical check with A fitted by DSM on exact student samples: see
    helpers.assert_small_gradient_with_dsm_fitted_aux."""
    h.assert_small_gradient_with_dsm_fitted_aux(lambda delta: _shifted_ring_grad(
        ring_mixture, delta, aux=dsm_fitted_ring(delta), weighting=weighting))


def test_diff_instruct_generator_gradient_zero_at_initialisation(mlp_teacher):
    """G = A = T (copies of the network teacher), guidance 1: A(z_t) - T(z_t) = 0, so the first G gradient is exactly zero; with a
    perturbed A it is not (the zero comes from A = T, not from a dead code path)."""
    for aux in (None, h.perturbed(mlp_teacher)):
        m = _make(mlp_teacher, ttur_ratio=1, aux=aux)
        xi, eps, t = _inputs(64, seed=2)
        loss, _ = m.generator_loss(xi.float(), eps.float(), t, None)
        grads = torch.autograd.grad(loss, list(m.student.parameters()))
        zero = all(torch.equal(g, torch.zeros_like(g)) for g in grads)
        m.generator.manual_seed(0)
        metrics = m.train_step(h.batch(0))
        if aux is None:
            assert zero and metrics["grad_norm/gen"] == 0.0 and metrics["loss/gen"] == 0.0
        else:
            assert not zero and metrics["grad_norm/gen"] > 0.0


# ================================================================================================================
# The plug-in contract (docs/methods.md#plumbing-tests)
# ================================================================================================================

def test_diff_instruct_state_round_trip_gives_identical_next_step(mlp_teacher):
    h.assert_ttur_round_trip(_make, mlp_teacher)


def test_diff_instruct_load_rejects_other_teacher(mlp_teacher):
    h.assert_rejects_other_teacher(_make, mlp_teacher)


def test_diff_instruct_ttur_bookkeeping_and_frozen_teacher(mlp_teacher):
    """G changes only when step % r == 0, A every step; the generator pass leaves A (and its .grad) alone; the
    teacher never changes. A starts perturbed so that the very first G gradient is non-zero."""
    h.assert_ttur_bookkeeping(lambda: _make(mlp_teacher, aux=h.perturbed(mlp_teacher), ttur_ratio=3), mlp_teacher, r=3)


@pytest.mark.parametrize(("changes", "field"), [
    ({"ttur_ratio": 0}, "ttur_ratio"),
    ({"ttur_ratio": -1}, "ttur_ratio"),
    ({"t_lo": 0.5, "t_hi": 0.5}, "t_lo"),
    ({"t_lo": 0.9, "t_hi": 0.1}, "t_hi"),
    ({"t_lo": -0.1}, "t_lo"),
    ({"weighting": "edm"}, "weighting"),
    ({"student_steps": 0}, "student_steps"),
    ({"lr_aux": 0.0}, "lr_aux"),
    ({"sigma_data": -1.0}, "sigma_data"),
])
def test_diff_instruct_config_validation_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        DiffInstructConfig(**changes)


def test_diff_instruct_config_has_no_langevin_knobs():
    """Diff-Instruct is EMD's K = 1 limit with the Langevin knobs fixed: they are not fields, and setting one fails."""
    with pytest.raises(ValueError, match="gamma_eps"):
        DiffInstructConfig.from_dict({"gamma_eps": 1.0})
    with pytest.raises(ValueError, match="langevin_steps"):
        build_method_config("diff-instruct", sets=["langevin_steps=1"])


def test_diff_instruct_is_one_step_only(mlp_teacher):
    for kwargs in ({"student_steps": 2}, {"sets": ["student_steps=4"]}):
        with pytest.raises(ValueError, match="student_steps"):
            build_method_config("diff-instruct", **kwargs)
    with pytest.raises(ValueError, match="ttur_ratio"):
        build_method_config("diff-instruct", preset="toy2d", sets=["ttur_ratio=0"])
    assert build_method_config("diff-instruct", preset="toy2d", sets=["weighting=unit"]).weighting == "unit"
    with pytest.raises(ValueError, match="student_steps"):
        DiffInstruct(mlp_teacher, DiffInstructConfig(student_steps=2), total_steps=10)


def test_diff_instruct_sample_is_one_step(mlp_teacher):
    m = _make(mlp_teacher)
    h.assert_one_step_sample(m)


def test_diff_instruct_metric_keys_namespaced_and_finite(mlp_teacher):
    m = _make(mlp_teacher, ttur_ratio=2)
    steps = h.train_steps(m, range(4))
    h.check_metrics(steps, required=h.TWO_NET_KEYS)
    for n, metrics in enumerate(steps):
        assert ("loss/gen" in metrics) == (n % 2 == 0), n


def test_diff_instruct_run_training_resume_is_exact(mlp_teacher, tmp_path):
    teacher_hash = parameter_hash(mlp_teacher)
    full, _, resumed = h.assert_exact_resume(lambda: _make(mlp_teacher, ttur_ratio=2, total_steps=h.TRAIN.iterations),
                                             tmp_path, {"name": "diff-instruct-test", "kind": "student"})
    assert not torch.equal(full.student.net.body[0].weight, mlp_teacher.net.body[0].weight)  # it did train
    assert parameter_hash(mlp_teacher) == teacher_hash == full.teacher_hash == resumed.teacher_hash
