"""MMD instant (parameter-space) correctness tests (docs/methods.md#mmd-instant-tests).

All seeded and CPU-only, with the network teacher (conftest.py) in float64. The sign tests feed one fixed batch as both
halves A
and B through the method's own distill step (a test-only switch: `half`, `draw` and `randn` are replaced on the
instance, and optimizer_step is replaced by a spy that records the gradient), and compares with an explicit
M(eta) = 1/2 ||mean grad_theta L_theta(x~(eta), z_s)||^2_Lambda differentiated by autograd (create_graph).
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import core.methods.mmd_instant as mi_module
from core.methods.mmd_instant import MMDInstant
from core.nets import parameter_hash
from core.posterior import posterior_coefficients, posterior_sample
from core.schedules import CosineSchedule
from core.time_sampling import edm_weight, karras_t

from . import helpers as h

F64 = torch.float64
SCHED = CosineSchedule()
BIAS_SHIFT = 0.2


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _random_precond(teacher, seed: int = 1) -> dict[str, torch.Tensor]:
    """A positive diagonal Lambda spanning e^-3 .. e^3, so a step that ignored it would point elsewhere."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.exp(6.0 * torch.rand(p.shape, generator=g, dtype=F64) - 3.0)
            for n, p in teacher.named_parameters()}


def _theta(teacher) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in teacher.named_parameters()}


def _teacher_grad(teacher, x, z_s, s, w, create_graph: bool = False) -> list[torch.Tensor]:
    """Gamma = grad_theta mean_b w_b ||x_b - T_theta(z_s,b)||^2, written out independently of the method."""
    th = {n: p.clone().requires_grad_(True) for n, p in _theta(teacher).items()}
    out = functional_call(teacher, th, (z_s, s, None))
    loss = (w * (x - out).pow(2).sum(1)).mean()
    return list(torch.autograd.grad(loss, list(th.values()), create_graph=create_graph))


def _lam_dot(lam: dict, a: list, b: list) -> torch.Tensor:
    return sum((lam_p * ap * bp).sum() for lam_p, ap, bp in zip(lam.values(), a, b, strict=True))


# ================================================================================================================
# The sign of the instant update, u = J_theta nu, the moment estimate
# ================================================================================================================

class _FixedBatch:
    """One batch (x, s, t, eps, n) with s kept away from the extremes of the EDM weight."""

    def __init__(self, teacher, m: MMDInstant, b: int = 24, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = h.BENCH.mixture.sample(b, g).to(F64)
        self.s = 0.15 + 0.6 * torch.rand(b, generator=g, dtype=F64)
        self.t = (self.s + torch.rand(b, generator=g, dtype=F64) / m.config.student_steps).clamp(max=1.0)
        self.z_t = SCHED.alpha(self.t)[:, None] * self.x + SCHED.sigma(self.t)[:, None] * torch.randn(
            b, 2, generator=g, dtype=F64)
        self.n = torch.randn(b, 2, generator=g, dtype=F64)
        self.w = edm_weight(SCHED.log_snr(self.s), m.config.sigma_data)  # k = 8, "auto" -> EDM
        self.eta0 = {k: p.detach().clone() for k, p in m.student.named_parameters()}
        self.student = m.student
        self.teacher = teacher
        # z_s is drawn once, at eta0, and held fixed (sg z_s).
        self.z_s = posterior_sample(SCHED, self.z_t, self.x_tilde(self.eta0).detach(), self.s, self.t, self.n)

    def x_tilde(self, eta: dict) -> torch.Tensor:
        return functional_call(self.student, eta, (self.z_t, self.t, None))

    def moment(self, eta: dict, lam: dict, create_graph: bool = False) -> torch.Tensor:
        """M(eta) = 1/2 Gamma(eta)^T Lambda Gamma(eta)."""
        gamma = _teacher_grad(self.teacher, self.x_tilde(eta), self.z_s, self.s, self.w, create_graph=create_graph)
        return 0.5 * _lam_dot(lam, gamma, gamma)

    def install(self, m: MMDInstant, monkeypatch) -> list:
        """Make m's distill step see this batch as both A and B; record the gradient of L_G instead of stepping."""
        m.half = lambda x, cond: ((x, None), (x, None))
        m.draw = lambda x: (self.s, self.t, self.z_t)
        m.randn = lambda shape: self.n.clone()
        seen: list = []
        h.spy_updates(m, lambda update, params: seen.append(
            (update.loss.detach(), [g.detach() for g in torch.autograd.grad(update.loss, params)])), step=False)
        return seen


@pytest.fixture
def fixed_batch_step(mlp_teacher64, monkeypatch):
    m = h.make_mmd_instant(mlp_teacher64, shift=BIAS_SHIFT, student_steps=8)
    m.precond = _random_precond(mlp_teacher64)
    fb = _FixedBatch(mlp_teacher64, m)
    seen = fb.install(m, monkeypatch)
    metrics = m.train_step({"x": fb.x})
    assert len(seen) == 1 and m.precond is not None
    return m, fb, seen[0], metrics


def test_mmd_instant_generator_gradient_is_half_the_moment_gradient(fixed_batch_step):
    m, fb, (loss, grads), metrics = fixed_batch_step
    eta = {k: v.clone().requires_grad_(True) for k, v in fb.eta0.items()}
    grad_m = torch.autograd.grad(fb.moment(eta, m.precond, create_graph=True), list(eta.values()))
    g_l, g_m = _flat(grads), _flat(grad_m)
    assert float(g_m.norm()) > 1e-3                     # the shifted student is away from the moment's zero
    cosine = float(g_l @ g_m / (g_l.norm() * g_m.norm()))
    c = float(g_l @ g_m / (g_m @ g_m))
    assert cosine > 0.999, cosine
    assert c == pytest.approx(0.5, rel=1e-9), c         # c = 1/2 with the batch means (docs/methods.md#sign-of-the-update)
    torch.testing.assert_close(g_l, 0.5 * g_m, rtol=1e-8, atol=1e-12 * float(g_m.abs().max()))
    # With A = B the logged moment estimate is Gamma^T Lambda Gamma = 2 M(eta0).
    assert metrics["mmd/moment_norm"] == pytest.approx(2.0 * float(fb.moment(fb.eta0, m.precond)), rel=1e-10)


def test_mmd_instant_sgd_step_lowers_the_moment_and_flipped_sign_raises_it(fixed_batch_step):
    m, fb, (_, grads), _ = fixed_batch_step
    lam = m.precond
    m0 = float(fb.moment(fb.eta0, lam))
    sq = float(_flat(grads) @ _flat(grads))
    lr = 1e-3 * m0 / sq  # first-order change of M: -lr <grad M, grad L_G> = -2 lr |grad L_G|^2 = -0.2 % of M
    down = {k: v - lr * g for (k, v), g in zip(fb.eta0.items(), grads, strict=True)}   # plain SGD on L_G
    up = {k: v + lr * g for (k, v), g in zip(fb.eta0.items(), grads, strict=True)}     # the flipped sign
    m_down, m_up = float(fb.moment(down, lam)), float(fb.moment(up, lam))
    assert m_down < m0 < m_up, (m_down, m0, m_up)
    # and by the first-order amount
    assert (m_down - m0) == pytest.approx(-2 * lr * sq, rel=0.05)
    assert (m_up - m0) == pytest.approx(2 * lr * sq, rel=0.05)


def test_mmd_instant_teacher_loss_grad_and_jvp_match_explicit_and_central_difference(fixed_batch_step):
    m, fb, _, _ = fixed_batch_step
    x0 = fb.x_tilde(fb.eta0).detach()
    grads, loss = m.teacher_loss_grad(x0, fb.z_s, fb.s, None)
    explicit = _teacher_grad(fb.teacher, x0, fb.z_s, fb.s, fb.w)
    assert list(grads) == m.names
    for g, e in zip(grads.values(), explicit, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12 * float(e.abs().max()))
    assert float(loss) == pytest.approx(float((fb.w * (x0 - fb.teacher(fb.z_s, fb.s)).pow(2).sum(1)).mean()), rel=1e-12)
    nu = {n: m.precond[n] * g for n, g in grads.items()}
    out, u = m.jvp_theta(nu, fb.z_s, fb.s, None)
    assert not u.requires_grad and u.shape == fb.z_s.shape
    assert torch.equal(out, fb.teacher(fb.z_s, fb.s))
    # Central difference along nu: the step h moves theta by at most 1e-4 per entry.
    h = 1e-4 / max(float(v.abs().max()) for v in nu.values())
    theta = _theta(fb.teacher)
    with torch.no_grad():
        plus = functional_call(fb.teacher, {n: p + h * nu[n] for n, p in theta.items()}, (fb.z_s, fb.s, None))
        minus = functional_call(fb.teacher, {n: p - h * nu[n] for n, p in theta.items()}, (fb.z_s, fb.s, None))
    fd = (plus - minus) / (2 * h)
    assert float(u.abs().max()) > 1.0                   # a non-trivial u (max |u| ~ 13 here)
    assert float((u - fd).abs().max()) < 1e-5, float((u - fd).abs().max())  # measured ~5e-8
    scale = float(u.abs().max())
    # u = J nu is linear in nu: halving nu halves u exactly (up to rounding).
    _, u_half = m.jvp_theta({n: 0.5 * v for n, v in nu.items()}, fb.z_s, fb.s, None)
    torch.testing.assert_close(u_half, 0.5 * u, rtol=1e-12, atol=1e-14 * scale)


def test_mmd_instant_double_vjp_fallback_gives_the_same_u(fixed_batch_step, monkeypatch):
    m, fb, _, _ = fixed_batch_step
    x0 = fb.x_tilde(fb.eta0).detach()
    grads, _ = m.teacher_loss_grad(x0, fb.z_s, fb.s, None)
    nu = {n: m.precond[n] * g for n, g in grads.items()}
    out_fwd, u_fwd = m.jvp_theta(nu, fb.z_s, fb.s, None)
    calls = []

    def no_forward_mode(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("this op has no forward-mode AD formula")

    monkeypatch.setattr(mi_module, "jvp", no_forward_mode)
    out_vjp, u_vjp = m.jvp_theta(nu, fb.z_s, fb.s, None)
    assert calls == [1]
    assert not u_vjp.requires_grad and not out_vjp.requires_grad
    torch.testing.assert_close(out_vjp, out_fwd, rtol=0, atol=0)
    torch.testing.assert_close(u_vjp, u_fwd, rtol=1e-12, atol=1e-14 * float(u_fwd.abs().max()))
    for n, p in m.teacher.named_parameters():  # the fallback must not leave grads or requires_grad behind
        assert p.grad is None and not p.requires_grad, n


def _replay_halves(m: MMDInstant, x: torch.Tensor, seed: int) -> dict:
    """Distill-step draws after m.generator.manual_seed(seed): (s, delta, eps, n) for B, then for A."""
    cfg, h = m.config, x.shape[0] // 2
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, xs in (("B", x[h:2 * h]), ("A", x[:h])):
        s = karras_t(h, m.schedule, cfg.sigma_min, cfg.sigma_max, cfg.rho, g)
        t = (s + torch.rand(h, generator=g, dtype=F64) / cfg.student_steps).clamp(max=m.schedule.t_max)
        eps = torch.randn(tuple(xs.shape), generator=g, dtype=F64)
        n = torch.randn(tuple(xs.shape), generator=g, dtype=F64)
        z_t = SCHED.alpha(t)[:, None] * xs + SCHED.sigma(t)[:, None] * eps
        with torch.no_grad():
            x_tilde = m.student(z_t, t, None)
        c_z, c_x, var = posterior_coefficients(SCHED, s, t)
        z_s = c_z[:, None] * z_t + c_x[:, None] * x_tilde + var.sqrt()[:, None] * n
        out[name] = {"s": s, "t": t, "x_tilde": x_tilde, "z_s": z_s}
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmd_instant_moment_estimate_equals_explicit_gamma_a_lambda_gamma_b(mlp_teacher64, seed):
    """With independent halves the logged m = mean_A[-2 w <x~ - T(z_s), u>] equals Gamma_A^T Lambda Gamma_B."""
    m = h.make_mmd_instant(mlp_teacher64, shift=BIAS_SHIFT, student_steps=8)
    m.precond = _random_precond(mlp_teacher64, seed=seed + 10)
    m.step = 5
    batch = h.batch(seed, 32, dtype=F64)
    rep = _replay_halves(m, batch["x"], seed=100 + seed)
    gammas = {}
    for name, r in rep.items():
        w = edm_weight(SCHED.log_snr(r["s"]), m.config.sigma_data)
        gammas[name] = _teacher_grad(mlp_teacher64, r["x_tilde"], r["z_s"], r["s"], w)
    explicit = float(_lam_dot(m.precond, gammas["A"], gammas["B"]))
    same_batch = float(_lam_dot(m.precond, gammas["A"], gammas["A"]))
    m.generator.manual_seed(100 + seed)
    metrics = m.train_step(batch)
    assert metrics["mmd/moment_norm"] == pytest.approx(explicit, rel=1e-8, abs=1e-12 * same_batch)
    assert metrics["mmd/moment_norm"] != pytest.approx(same_batch, rel=1e-3)  # the halves really are independent


# ================================================================================================================
# The preconditioner phase (docs/methods.md#preconditioner)
# ================================================================================================================

def test_preconditioner_phase_matches_explicit_bias_corrected_adam_v(mlp_teacher64):
    beta2, eps, nb = 0.9, 1e-8, 3  # beta2 well below 1 so the per-batch weights differ
    m = h.make_mmd_instant(mlp_teacher64, total_steps=6, precond_batches=nb, precond_beta2=beta2, precond_eps=eps)
    teacher_hash, student0 = parameter_hash(mlp_teacher64), h.snapshot(m.student)
    grads = []
    for n in range(nb):
        x = h.batch(n, 32, dtype=F64)["x"]
        g = torch.Generator().manual_seed(200 + n)  # order: s, delta, eps (unused), n; z_s = alpha_s x + sigma_s n
        s = karras_t(32, SCHED, m.config.sigma_min, m.config.sigma_max, m.config.rho, g)
        torch.rand(32, generator=g, dtype=F64)
        torch.randn(32, 2, generator=g, dtype=F64)
        z_s = SCHED.alpha(s)[:, None] * x + SCHED.sigma(s)[:, None] * torch.randn(32, 2, generator=g, dtype=F64)
        w = edm_weight(SCHED.log_snr(s), m.config.sigma_data)
        grads.append(_teacher_grad(mlp_teacher64, x, z_s, s, w))
        loss = float((w * (x - mlp_teacher64(z_s, s)).pow(2).sum(1)).mean())
        m.generator.manual_seed(200 + n)
        metrics = m.train_step({"x": x})
        assert metrics["loss/teacher"] == pytest.approx(loss, rel=1e-12)
        assert metrics["mmd/precond_progress"] == pytest.approx((n + 1) / nb)
        assert "loss/gen" not in metrics
        assert not any(h.changed(m.student, student0)), n
        assert parameter_hash(mlp_teacher64) == teacher_hash
        assert all(p.grad is None and not p.requires_grad for p in m.teacher.parameters())
        assert (m.precond is None) == (n < nb - 1), n
    assert m.optims["gen"][1].last_epoch == 0  # the LR schedule starts after the phase
    v = [sum((1 - beta2) * beta2 ** (nb - 1 - i) * grads[i][j].pow(2) for i in range(nb)) for j in range(len(m.names))]
    for name, v_j in zip(m.names, v, strict=True):
        torch.testing.assert_close(m.v[name], v_j, rtol=1e-12, atol=0)
        expected = 1.0 / ((v_j / (1 - beta2**nb)).sqrt() + eps)
        torch.testing.assert_close(m.precond[name], expected, rtol=1e-12, atol=0)
        assert bool((m.precond[name] > 0).all())
    frozen = {k: v.clone() for k, v in m.precond.items()}
    # Distillation: the student moves, the teacher and Lambda do not.
    for n in range(nb, 6):
        before = h.snapshot(m.student)
        m.generator.manual_seed(200 + n)
        metrics = m.train_step(h.batch(n, 32, dtype=F64))
        assert "loss/gen" in metrics and "loss/teacher" not in metrics
        assert all(h.changed(m.student, before)), n
        assert parameter_hash(mlp_teacher64) == teacher_hash
        assert all(torch.equal(m.precond[k], frozen[k]) for k in frozen)


@pytest.mark.parametrize(("steps", "kind"), [(2, "unit"), (4, "edm"), (8, "edm")])
def test_auto_weighting_follows_student_steps(mlp_teacher, steps, kind):
    assert h.make_mmd_instant(mlp_teacher, student_steps=steps).weighting == kind


@pytest.mark.parametrize("total", [3, 2])
def test_iterations_must_exceed_precond_batches(mlp_teacher, total):
    with pytest.raises(ValueError, match="precond_batches"):
        h.make_mmd_instant(mlp_teacher, total_steps=total, precond_batches=3)


def test_distill_phase_rejects_batch_size_one(mlp_teacher):
    m = h.make_mmd_instant(mlp_teacher, total_steps=5, precond_batches=1)
    m.generator.manual_seed(0)
    m.train_step(h.batch(0, 1))               # the preconditioner phase works on any batch
    assert m.precond is not None
    before = h.snapshot(m.student)
    with pytest.raises(ValueError, match="batch_size"):
        m.train_step(h.batch(1, 1))
    assert m.step == 1 and not any(h.changed(m.student, before))
    m.train_step(h.batch(1, 2))               # two examples are enough: one per half
    assert m.step == 2
