"""Alternating MMD correctness tests (METHODS.md §3, §10: T11, T12, T15; §11 plug-in contract).

All seeded and CPU-only. Exactness checks run the F2 teacher (conftest.py) in float64, so the method draws its noise
in float64 too; the draws of one `train_step` are replayed from a generator seeded like the method's, in the order
MMD.train_step documents (s, delta, eps, n).
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

import core.methods.mmd as mmd_module
from core.method_specs import MMDConfig
from core.methods.mmd import MMD
from core.nets import parameter_hash
from core.posterior import posterior_coefficients, posterior_sample
from core.samplers import ancestral, marginal
from core.schedules import CosineSchedule, time_grid
from core.time_sampling import edm_weight, karras_t, mmd_weighting

from . import helpers as h

F64 = torch.float64
SCHED = CosineSchedule()
TOY = {"sigma_data": 1.42, "lr_gen": 1e-3, "lr_aux": 1e-3}  # the toy2d preset's knobs


@pytest.fixture(scope="module")
def teacher64(mlp_teacher):
    """F2 in float64 (a copy: the session fixture itself is never modified)."""
    return copy.deepcopy(mlp_teacher).double().eval().requires_grad_(False)


def _make(teacher, total_steps: int = 50, **config) -> MMD:
    return MMD(teacher, MMDConfig(**{**TOY, **config}), total_steps=total_steps)


def _col(c: torch.Tensor) -> torch.Tensor:
    return c[:, None]


def _replay(m: MMD, x: torch.Tensor, seed: int) -> dict:
    """The draws of one train_step after m.generator.manual_seed(seed), in the documented order s, delta, eps, n,
    and everything that follows from them with the networks as they are *before* the step."""
    cfg, b = m.config, x.shape[0]
    g = torch.Generator().manual_seed(seed)
    s = karras_t(b, m.schedule, cfg.sigma_min, cfg.sigma_max, cfg.rho, g)
    delta = torch.rand(b, generator=g, dtype=F64) / cfg.student_steps
    t = (s + delta).clamp(max=m.schedule.t_max)
    eps = torch.randn(tuple(x.shape), generator=g, dtype=m.dtype)
    n = torch.randn(tuple(x.shape), generator=g, dtype=m.dtype)
    z_t = _col(m.schedule.alpha(t)).to(x.dtype) * x + _col(m.schedule.sigma(t)).to(x.dtype) * eps
    with torch.no_grad():
        x_tilde = m.student(z_t, t, None)
    c_z, c_x, var = posterior_coefficients(m.schedule, s, t)
    # §2.3 written out: z_s = c_z z_t + c_x sg(x~) + sqrt(var) n.
    z_s = _col(c_z).to(x.dtype) * z_t + _col(c_x).to(x.dtype) * x_tilde + _col(var.sqrt()).to(x.dtype) * n
    return {"s": s, "t": t, "eps": eps, "n": n, "z_t": z_t, "x_tilde": x_tilde, "z_s": z_s, "c_z": c_z}


def _run_captured(m: MMD, batch: dict, seed: int) -> dict:
    """One train_step, recording the student's input/output, what `renoise` returned and what A was fed."""
    rec: dict = {}

    def student_hook(_mod, args, out):
        rec["z_t"], rec["t"], rec["x_tilde"] = args[0], args[1], out

    def aux_pre_hook(_mod, args):
        rec["aux_z_s"], rec["aux_s"] = args[0], args[1]

    original = m.renoise

    def renoise(*args):
        out = original(*args)
        rec["renoise_out"] = out
        return out

    handles = [m.student.register_forward_hook(student_hook), m.aux.register_forward_pre_hook(aux_pre_hook)]
    m.renoise = renoise
    try:
        m.generator.manual_seed(seed)
        rec["metrics"] = m.train_step(batch)
    finally:
        del m.renoise
        for h in handles:
            h.remove()
    return rec


def _assert_conditional(rec: dict, exp: dict) -> None:
    """T11: the z_s that A (and T) receive is the conditional posterior draw for the drawn (s, t)."""
    assert rec["aux_z_s"] is rec["renoise_out"]
    torch.testing.assert_close(rec["aux_z_s"], exp["z_s"], rtol=0, atol=1e-13)


# ================================================================================================================
# T11: conditional re-noising
# ================================================================================================================

def test_t11_train_step_uses_conditional_posterior(teacher64):
    m = _make(teacher64, student_steps=2)  # k = 2: delta ~ U[0, 1/2], so many examples clamp to t = 1
    for n in range(4):                     # two auxiliary turns (even n), two generator turns (odd n)
        batch = h.batch(n, dtype=F64)
        exp = _replay(m, batch["x"], seed=10 + n)
        rec = _run_captured(m, batch, seed=10 + n)
        # The draws are the documented ones: s, delta -> t, eps -> z_t (forward noising), A is queried at s.
        assert torch.equal(rec["t"], exp["t"]) and torch.equal(rec["aux_s"], exp["s"])
        assert torch.equal(rec["z_t"], exp["z_t"])
        torch.testing.assert_close(rec["x_tilde"].detach(), exp["x_tilde"], rtol=0, atol=0)
        _assert_conditional(rec, exp)
        # Both regimes occur, and the z_t term is really present where t < 1.
        at_one = exp["t"] == 1.0
        assert 0 < int(at_one.sum()) < at_one.numel(), n
        assert bool((exp["c_z"][~at_one] > 0).all()) and bool((exp["c_z"][at_one] == 0).all())
        # At t = 1 the conditional reduces to the marginal draw alpha_s x~ + sigma_s n.
        s1 = exp["s"][at_one]
        marg = _col(SCHED.alpha(s1)) * exp["x_tilde"][at_one] + _col(SCHED.sigma(s1)) * exp["n"][at_one]
        torch.testing.assert_close(rec["aux_z_s"][at_one], marg, rtol=0, atol=1e-14)
        # No gradient path from z_s to eta, although x~ carries one on generator turns.
        z_s = rec["renoise_out"]
        assert not z_s.requires_grad and z_s.grad_fn is None
        assert rec["x_tilde"].requires_grad == (n % 2 == 1), n
        if n % 2 == 1:  # negative control: without the stop-gradient the same draw would carry x~'s history
            leaky = posterior_sample(SCHED, rec["z_t"], rec["x_tilde"], rec["aux_s"], rec["t"], exp["n"])
            assert leaky.grad_fn is not None
            torch.testing.assert_close(leaky.detach(), z_s, rtol=0, atol=0)


def test_t11_marginal_renoise_ablation_fails_the_conditional_check(teacher64):
    """The "marginal" ablation config (fresh-noise q(z_s | x~)) must be flagged by the T11 assertion; it agrees with
    the conditional draw only where t = 1."""
    m = _make(teacher64, student_steps=2, renoise="marginal")
    for n in range(2):
        batch = h.batch(n, dtype=F64)
        exp = _replay(m, batch["x"], seed=10 + n)
        rec = _run_captured(m, batch, seed=10 + n)
        with pytest.raises(AssertionError):
            _assert_conditional(rec, exp)
        at_one = exp["t"] == 1.0
        marg = _col(SCHED.alpha(exp["s"])) * exp["x_tilde"] + _col(SCHED.sigma(exp["s"])) * exp["n"]
        torch.testing.assert_close(rec["aux_z_s"], marg, rtol=0, atol=1e-14)
        gap = (rec["aux_z_s"] - exp["z_s"]).norm(dim=1)
        assert float(gap[~at_one].min()) > 1e-6 and float(gap[at_one].max()) < 1e-13


def _sampler_states(m: MMD, sampler, noise, steps):
    states = []
    out = sampler(noise, m.student, time_grid(SCHED, steps), None, callback=lambda st: states.append(dict(st)))
    return out, states


def _manual_posterior_steps(m: MMD, noise, steps) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Alg. 1 by hand: x = G(z_t, t); z_s = posterior_sample(z_t, x, s, t, n_i), on t_i = 1 - i/k."""
    grid = time_grid(SCHED, steps)
    assert torch.equal(grid, torch.tensor([1.0 - i / steps for i in range(steps)] + [0.0], dtype=F64))
    zs, xs, z = [], [], noise[0]
    b = z.shape[0]
    with torch.no_grad():
        for i in range(steps):
            t, s = grid[i].expand(b), grid[i + 1].expand(b)
            x = m.student(z, t, None)
            zs.append(z)
            xs.append(x)
            if i + 1 < steps:
                z_next = posterior_sample(SCHED, z, x, s, t, noise[i + 1])
                # training's re-noising function gives the same draw for the same inputs
                assert torch.equal(m.renoise(z, x, s, t, noise[i + 1]), z_next)
                z = z_next
    return zs, xs


@pytest.mark.parametrize("steps", [2, 4])
def test_t11_sample_is_conditional_ancestral_bit_for_bit(teacher64, steps):
    m = _make(teacher64, student_steps=steps)
    m.student.eval()
    noise = torch.randn(steps, 32, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    out, states = _sampler_states(m, ancestral, noise, steps)
    assert torch.equal(m.sample(noise, None, steps), out)
    assert torch.equal(m.sample(noise), out)                 # steps defaults to the config's k
    zs, xs = _manual_posterior_steps(m, noise, steps)
    assert [st["step"] for st in states] == list(range(steps))
    for i in range(steps):
        assert torch.equal(states[i]["z_t"], zs[i]), i
        assert torch.equal(states[i]["x0_hat"], xs[i]), i
    assert torch.equal(out, xs[-1])
    # Negative control: fresh-noise (marginal) re-noising. The first re-noising starts from t = 1, where the
    # conditional reduces to the marginal, so it agrees there and differs at every later state.
    _, wrong = _sampler_states(m, marginal, noise, steps)
    torch.testing.assert_close(wrong[1]["z_t"], zs[1], rtol=0, atol=1e-14)
    assert all(not torch.allclose(wrong[i]["z_t"], zs[i], rtol=0, atol=1e-6) for i in range(2, steps))


def test_t11_sample_has_no_grad(teacher64):
    m = _make(teacher64, student_steps=2)
    noise = torch.randn(2, 8, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    out = m.sample(noise)
    assert not out.requires_grad and out.shape == (8, 2)


# ================================================================================================================
# T12: alternation bookkeeping
# ================================================================================================================

def test_t12_even_iterations_update_aux_odd_update_student(mlp_teacher):
    teacher_hash = parameter_hash(mlp_teacher)
    m = _make(mlp_teacher, student_steps=4)
    for n in range(6):
        before_s, before_a = h.snapshot(m.student), h.snapshot(m.aux)
        m.generator.manual_seed(n)
        metrics = m.train_step(h.batch(n))
        s_changed, a_changed = h.changed(m.student, before_s), h.changed(m.aux, before_a)
        if n % 2 == 0:
            assert "loss/aux" in metrics and "loss/gen" not in metrics, n
            assert all(a_changed) and not any(s_changed), n
        else:
            assert "loss/gen" in metrics and "loss/aux" not in metrics, n
            assert all(s_changed) and not any(a_changed), n
        assert all(p.grad is None for p in m.student.parameters())
        assert all(p.grad is None for p in m.aux.parameters())
        assert m.step == n + 1
    assert parameter_hash(mlp_teacher) == teacher_hash == parameter_hash(m.teacher)


@pytest.mark.parametrize("total", [40, 41])
def test_each_schedule_spans_its_own_updates_and_decays_to_zero(mlp_teacher, total):
    """§3.7: warm-up, then linear decay to 0 by the end of the run. G and A each update on every other iteration,
    so each schedule counts its own updates: the last update of each runs at the smallest LR of its schedule, and the
    warm-up is 5 % of that network's updates, not of the iterations."""
    m = _make(mlp_teacher, student_steps=4, total_steps=total, warmup=1000)
    lrs: dict[str, list[float]] = {"gen": [], "aux": []}
    for n in range(total):
        m.generator.manual_seed(n)
        metrics = m.train_step(h.batch(n, size=16))
        for k in lrs:
            if f"lr/{k}" in metrics:
                lrs[k].append(metrics[f"lr/{k}"])
    assert (len(lrs["gen"]), len(lrs["aux"])) == (total // 2, (total + 1) // 2)
    for k, seq in lrs.items():
        updates, warm = len(seq), max(1, len(seq) // 20)
        assert seq[warm - 1] == pytest.approx(1e-3), k                        # warm-up done
        assert seq[-1] == pytest.approx(1e-3 / (updates - warm)), k             # one step above 0
        assert all(a > b for a, b in zip(seq[warm:], seq[warm + 1:])), k         # strictly decaying after warm-up
    assert m.optims["gen"][1].get_last_lr()[0] == 0.0 == m.optims["aux"][1].get_last_lr()[0]


def test_t12_generator_loss_at_init_has_exactly_zero_gradient(mlp_teacher):
    """G = A = T, w = 1, no auxiliary update yet: A(z_s) - T_g(z_s) == 0, so L_G has zero gradient and the student
    stays bit-identical (Adam with a zero gradient does not move)."""
    m = _make(mlp_teacher)
    before = h.snapshot(m.student)
    m.step = 1  # a generator turn before any auxiliary update
    m.generator.manual_seed(0)
    metrics = m.train_step(h.batch(0))
    assert metrics["loss/gen"] == 0.0 and metrics["mmd/moment_gap"] == 0.0
    assert metrics["grad_norm/gen"] == 0.0
    assert not any(h.changed(m.student, before))
    # Control: the same evaluation with A a hair away from T does reach the student.
    m2 = _make(mlp_teacher)
    with torch.no_grad():
        m2.aux.net.body[-1].bias.add_(1e-3)
    m2.step = 1
    m2.generator.manual_seed(0)
    metrics2 = m2.train_step(h.batch(0))
    assert metrics2["grad_norm/gen"] > 0.0 and all(h.changed(m2.student, before))


def _spy_optimizer_step(monkeypatch) -> list:
    """Record the gradient of every loss handed to optimizer_step (then step as usual)."""
    seen: list = []
    original = mmd_module.optimizer_step

    def spy(loss, opt, sched, params, clip):
        seen.append([g.detach().clone() for g in torch.autograd.grad(loss, params, retain_graph=True)])
        return original(loss, opt, sched, params, clip)

    monkeypatch.setattr(mmd_module, "optimizer_step", spy)
    return seen


def test_t12_generator_gradient_matches_explicit_loss(teacher64, monkeypatch):
    """L_G = mean w(s) <x~, sg(A(z_s) - T(z_s))> (§3.3 step 6), recomputed from the replayed draws."""
    m = _make(teacher64, student_steps=8)
    with torch.no_grad():
        m.aux.net.body[-1].bias.add_(torch.tensor([0.05, -0.03], dtype=F64))  # A != T
    m.step = 1
    batch = h.batch(0, 32, dtype=F64)
    exp = _replay(m, batch["x"], seed=7)
    with torch.no_grad():
        gap = m.aux(exp["z_s"], exp["s"]) - m.teacher(exp["z_s"], exp["s"])
    w = edm_weight(SCHED.log_snr(exp["s"]), m.config.sigma_data)  # k = 8, "auto" -> EDM
    params = list(m.student.parameters())
    x_tilde = m.student(exp["z_t"], exp["t"])
    loss = (w * (x_tilde * gap).sum(1)).mean()
    expected = torch.autograd.grad(loss, params)
    seen = _spy_optimizer_step(monkeypatch)
    m.generator.manual_seed(7)
    metrics = m.train_step(batch)
    assert len(seen) == 1
    for g, e in zip(seen[0], expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-14)
    assert metrics["loss/gen"] == pytest.approx(float(loss.detach()), rel=1e-12)
    assert metrics["grad_norm/gen"] == pytest.approx(float(torch.cat([e.flatten() for e in expected]).norm()), rel=1e-10)


@pytest.mark.parametrize(("steps", "weighting", "kind"), [
    (2, "auto", "unit"), (8, "auto", "edm"), (2, "edm", "edm"), (8, "unit", "unit"), (8, "adaptive", "adaptive"),
])
def test_aux_loss_matches_explicit_with_the_right_weight(teacher64, steps, weighting, kind):
    """L_A = mean w(s) (||sg x~ - A(z_s)||^2 + ||T(z_s) - A(z_s)||^2) with the weight "auto" resolves to."""
    m = _make(teacher64, student_steps=steps, weighting=weighting)
    assert m.weighting == kind
    with torch.no_grad():  # A != T, so both terms of L_A are non-zero
        m.aux.net.body[-1].bias.add_(torch.tensor([0.05, -0.03], dtype=F64))
    batch = h.batch(1, 32, dtype=F64)
    exp = _replay(m, batch["x"], seed=5)
    with torch.no_grad():
        a, tt = m.aux(exp["z_s"], exp["s"]), m.teacher(exp["z_s"], exp["s"])
    per_example = (exp["x_tilde"] - a).pow(2).sum(1) + (tt - a).pow(2).sum(1)
    weights = {"unit": torch.ones_like(exp["s"]), "edm": edm_weight(SCHED.log_snr(exp["s"]), 1.42),
               "adaptive": 1.0 / (exp["x_tilde"] - tt).abs().mean(1)}
    m.generator.manual_seed(5)
    metrics = m.train_step(batch)
    for name, w in weights.items():
        value = float((w * per_example).mean())
        if name == kind:
            assert metrics["loss/aux"] == pytest.approx(value, rel=1e-12), name
        else:
            assert metrics["loss/aux"] != pytest.approx(value, rel=1e-3), name


# ================================================================================================================
# Time sampling and weighting (§3.4)
# ================================================================================================================

@pytest.mark.parametrize(("steps", "t_max"), [(1, 1.0), (2, 1.0), (8, 1.0), (8, 0.99)])
def test_draw_times_karras_s_and_gap(mlp_teacher, steps, t_max):
    teacher = copy.deepcopy(mlp_teacher)
    teacher.schedule = CosineSchedule(t_max=t_max)
    m = _make(teacher, student_steps=steps)
    cfg, n = m.config, 20000
    m.generator.manual_seed(0)
    s, t = m.draw_times(n)
    assert s.dtype == t.dtype == F64 and s.shape == t.shape == (n,)
    lo = float(teacher.schedule.t_from_log_snr(torch.tensor(-2.0 * math.log(cfg.sigma_min), dtype=F64)))
    hi = min(float(teacher.schedule.t_from_log_snr(torch.tensor(-2.0 * math.log(cfg.sigma_max), dtype=F64))), t_max)
    assert float(s.min()) >= lo - 1e-12 and float(s.max()) <= hi + 1e-12
    gap = t - s
    assert float(gap.min()) >= 0.0 and float(gap.max()) <= 1.0 / steps + 1e-12
    assert float(t.max()) <= t_max
    # s follows Karras' density: u recovered from sigma_bar = tan(pi s / 2) is U(0, 1) (KS bound at ~1e-4 level).
    inv = 1.0 / cfg.rho
    u = (torch.tan(0.5 * math.pi * s) ** inv - cfg.sigma_max**inv) / (cfg.sigma_min**inv - cfg.sigma_max**inv)
    u = u[s < t_max - 1e-9] if t_max < 1 else u
    ks = float((torch.sort(u).values - (torch.arange(u.numel(), dtype=F64) + 0.5) / u.numel()).abs().max())
    if t_max == 1.0:
        assert ks < 2.0 / math.sqrt(n), ks
    # delta ~ U[0, 1/k] where no clamping can occur (s <= t_max - 1/k).
    free = s <= t_max - 1.0 / steps
    if int(free.sum()) > 1000:
        d = torch.sort(gap[free] * steps).values
        ks_d = float((d - (torch.arange(d.numel(), dtype=F64) + 0.5) / d.numel()).abs().max())
        assert ks_d < 2.0 / math.sqrt(d.numel()), ks_d


@pytest.mark.parametrize(("steps", "kind"), [(1, "unit"), (2, "unit"), (4, "edm"), (8, "edm"), (16, "edm")])
def test_auto_weighting_by_student_steps(steps, kind):
    cfg = MMDConfig(student_steps=steps)
    assert mmd_weighting(cfg) == kind
    assert mmd_weighting(cfg.replace(weighting="adaptive")) == "adaptive"


def test_edm_weight_formula():
    s = torch.linspace(0.01, 0.99, 50, dtype=F64)
    sigma_bar = torch.tan(0.5 * math.pi * s)
    expected = (sigma_bar**2 + 0.5**2) / (sigma_bar * 0.5) ** 2
    torch.testing.assert_close(edm_weight(SCHED.log_snr(s), 0.5), expected, rtol=1e-12, atol=0)


# ================================================================================================================
# T15: plumbing
# ================================================================================================================


def test_t15_state_round_trip_gives_identical_next_step(mlp_teacher):
    m1 = _make(mlp_teacher, student_steps=4)
    state = h.state_after(m1, 3)
    assert state["teacher_hash"] == parameter_hash(mlp_teacher)
    assert MMDConfig.from_dict(state["config"]) == m1.config
    m2 = _make(mlp_teacher, student_steps=4)
    m2.load_state_dict(state)
    assert m2.step == m1.step == 3
    steps = (3, 4, 5)  # generator, auxiliary, generator turns
    for n, out in zip(steps, h.assert_same_next_steps(m1, m2, steps), strict=True):
        assert ("loss/gen" in out) == (n % 2 == 1)
    assert parameter_hash(m1.teacher) == parameter_hash(mlp_teacher)


def test_t15_load_rejects_other_teacher(mlp_teacher):
    h.assert_rejects_other_teacher(_make, mlp_teacher)


@pytest.mark.parametrize(("changes", "field"), [
    ({"lr_gen": 0.0}, "lr_gen"),
    ({"lr_gen": -1e-4}, "lr_gen"),
    ({"lr_aux": 0.0}, "lr_aux"),
    ({"lr_aux": float("nan")}, "lr_aux"),
    ({"sigma_min": 80.0, "sigma_max": 80.0}, "sigma_min"),
    ({"sigma_min": 100.0}, "sigma_min"),
    ({"sigma_min": 0.0}, "sigma_min"),
    ({"rho": 0.0}, "rho"),
    ({"weighting": "edm2"}, "weighting"),
    ({"weighting": "dmd"}, "weighting"),
    ({"renoise": "fresh"}, "renoise"),
    ({"student_steps": 0}, "student_steps"),
    ({"beta2": 1.0}, "beta2"),
    ({"sigma_data": -1.0}, "sigma_data"),
])
def test_t15_config_validation_names_the_field(changes, field):
    with pytest.raises(ValueError, match=f"^mmd: {field}"):
        MMDConfig(**changes)


def test_t15_config_round_trips():
    cfg = MMDConfig(**TOY, student_steps=4, renoise="marginal", weighting="unit")
    assert MMDConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        MMDConfig.from_dict({**cfg.to_dict(), "ttur_ratio": 2})


def test_t15_metric_keys_namespaced_and_finite(mlp_teacher):
    m = _make(mlp_teacher, student_steps=4)
    h.check_metrics(h.train_steps(m, range(4)), required=h.TWO_NET_KEYS | {"mmd/moment_gap"})


def test_t15_run_training_resume_is_exact(mlp_teacher, tmp_path):
    full, _, _ = h.assert_exact_resume(lambda: _make(mlp_teacher, student_steps=4, total_steps=h.TRAIN.iterations), tmp_path,
                                       {"name": "mmd-test", "kind": "student"},
                                       train=replace(h.TRAIN, preview_seeds=tuple(range(8))))
    # The run did train both networks.
    assert any(not torch.equal(p, q) for p, q in zip(full.student.parameters(), mlp_teacher.parameters()))
    assert parameter_hash(mlp_teacher) == full.teacher_hash
