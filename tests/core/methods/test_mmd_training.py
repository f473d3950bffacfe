"""Alternating MMD's training loop (docs/methods.md#mmd-tests): the alternation, both losses against their formulas,
the per-network LR schedules, time sampling and weighting, and the plug-in contract.

All seeded and CPU-only. Exactness checks run the network teacher (conftest.py) in float64 and replay the draws of
one `train_step` with `helpers.replay_mmd_step`.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from core.method_specs import MMDConfig
from core.nets import parameter_hash
from core.schedules import CosineSchedule
from core.time_sampling import edm_weight, mmd_weighting

from . import helpers as h

F64 = torch.float64
SCHED = CosineSchedule()


# ================================================================================================================
# Alternation bookkeeping
# ================================================================================================================

def test_mmd_even_iterations_update_aux_odd_update_student(mlp_teacher):
    teacher_hash = parameter_hash(mlp_teacher)
    m = h.make_mmd(mlp_teacher, student_steps=4)
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
def test_mmd_each_schedule_spans_its_own_updates_and_decays_to_zero(mlp_teacher, total):
    """Warm-up, then linear decay to 0 by the end of the run (docs/methods.md#mmd-knobs). G and A each update on every
    other iteration, so each schedule counts its own updates: the last update of each runs at the smallest LR of its
    schedule, and the warm-up is 5 % of that network's updates, not of the iterations."""
    m = h.make_mmd(mlp_teacher, student_steps=4, total_steps=total, warmup=1000)
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


def test_mmd_generator_loss_at_init_has_exactly_zero_gradient(mlp_teacher):
    """G = A = T, w = 1, no auxiliary update yet: A(z_s) - T_g(z_s) == 0, so L_G has zero gradient and the student
    stays bit-identical (Adam with a zero gradient does not move)."""
    m = h.make_mmd(mlp_teacher)
    before = h.snapshot(m.student)
    m.step = 1  # a generator turn before any auxiliary update
    m.generator.manual_seed(0)
    metrics = m.train_step(h.batch(0))
    assert metrics["loss/gen"] == 0.0 and metrics["mmd/moment_gap"] == 0.0
    assert metrics["grad_norm/gen"] == 0.0
    assert not any(h.changed(m.student, before))
    # Control: the same evaluation with A a hair away from T does reach the student.
    m2 = h.make_mmd(mlp_teacher)
    with torch.no_grad():
        m2.aux.net.body[-1].bias.add_(1e-3)
    m2.step = 1
    m2.generator.manual_seed(0)
    metrics2 = m2.train_step(h.batch(0))
    assert metrics2["grad_norm/gen"] > 0.0 and all(h.changed(m2.student, before))


def _spy_optimizer_step(m) -> list:
    """Record the gradient of every loss the method hands the loop to step (then step as usual)."""
    seen: list = []
    h.spy_updates(m, lambda update, params: seen.append(
        [g.detach().clone() for g in torch.autograd.grad(update.loss, params, retain_graph=True)]))
    return seen


def test_mmd_generator_gradient_matches_explicit_loss(mlp_teacher64):
    """L_G = mean w(s) <x~, sg(A(z_s) - T(z_s))> (docs/methods.md#mmd), recomputed from the replayed draws."""
    m = h.make_mmd(mlp_teacher64, student_steps=8)
    with torch.no_grad():
        m.aux.net.body[-1].bias.add_(torch.tensor([0.05, -0.03], dtype=F64))  # A != T
    m.step = 1
    batch = h.batch(0, 32, dtype=F64)
    exp = h.replay_mmd_step(m, batch["x"], seed=7)
    with torch.no_grad():
        gap = m.aux(exp["z_s"], exp["s"]) - m.teacher(exp["z_s"], exp["s"])
    w = edm_weight(SCHED.log_snr(exp["s"]), m.config.sigma_data)  # k = 8, "auto" -> EDM
    params = list(m.student.parameters())
    x_tilde = m.student(exp["z_t"], exp["t"])
    loss = (w * (x_tilde * gap).sum(1)).mean()
    expected = torch.autograd.grad(loss, params)
    seen = _spy_optimizer_step(m)
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
def test_aux_loss_matches_explicit_with_the_right_weight(mlp_teacher64, steps, weighting, kind):
    """L_A = mean w(s) (||sg x~ - A(z_s)||^2 + ||T(z_s) - A(z_s)||^2) with the weight "auto" resolves to."""
    m = h.make_mmd(mlp_teacher64, student_steps=steps, weighting=weighting)
    assert m.weighting == kind
    with torch.no_grad():  # A != T, so both terms of L_A are non-zero
        m.aux.net.body[-1].bias.add_(torch.tensor([0.05, -0.03], dtype=F64))
    batch = h.batch(1, 32, dtype=F64)
    exp = h.replay_mmd_step(m, batch["x"], seed=5)
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
# Time sampling and weighting (docs/methods.md#time-sampling-and-weights)
# ================================================================================================================

@pytest.mark.parametrize(("steps", "t_max"), [(1, 1.0), (2, 1.0), (8, 1.0), (8, 0.99)])
def test_draw_times_karras_s_and_gap(mlp_teacher, steps, t_max):
    teacher = copy.deepcopy(mlp_teacher)
    teacher.schedule = CosineSchedule(t_max=t_max)
    m = h.make_mmd(teacher, student_steps=steps)
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
# The plug-in contract (docs/methods.md#plumbing-tests)
# ================================================================================================================


def test_mmd_state_round_trip_gives_identical_next_step(mlp_teacher):
    m1 = h.make_mmd(mlp_teacher, student_steps=4)
    state = h.state_after(m1, 3)
    assert state["teacher_hash"] == parameter_hash(mlp_teacher)
    assert MMDConfig.from_dict(state["config"]) == m1.config
    m2 = h.make_mmd(mlp_teacher, student_steps=4)
    m2.load_state_dict(state)
    assert m2.step == m1.step == 3
    steps = (3, 4, 5)  # generator, auxiliary, generator turns
    for n, out in zip(steps, h.assert_same_next_steps(m1, m2, steps), strict=True):
        assert ("loss/gen" in out) == (n % 2 == 1)
    assert parameter_hash(m1.teacher) == parameter_hash(mlp_teacher)


def test_mmd_load_rejects_other_teacher(mlp_teacher):
    h.assert_rejects_other_teacher(h.make_mmd, mlp_teacher)


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
def test_mmd_config_validation_names_the_field(changes, field):
    with pytest.raises(ValueError, match=f"^mmd: {field}"):
        MMDConfig(**changes)


def test_mmd_config_round_trips():
    cfg = MMDConfig(**h.TOY, student_steps=4, renoise="marginal", weighting="unit")
    assert MMDConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        MMDConfig.from_dict({**cfg.to_dict(), "ttur_ratio": 2})


def test_mmd_metric_keys_namespaced_and_finite(mlp_teacher):
    m = h.make_mmd(mlp_teacher, student_steps=4)
    h.check_metrics(h.train_steps(m, range(4)), required=h.TWO_NET_KEYS | {"mmd/moment_gap"})


def test_mmd_run_training_resume_is_exact(mlp_teacher, tmp_path):
    full, _, _ = h.assert_exact_resume(lambda: h.make_mmd(mlp_teacher, student_steps=4, total_steps=h.TRAIN.iterations), tmp_path,
                                       {"name": "mmd-test", "kind": "student"},
                                       train=h.TRAIN.replace(preview_seeds=tuple(range(8))))
    # The run did train both networks.
    assert any(not torch.equal(p, q) for p, q in zip(full.student.parameters(), mlp_teacher.parameters()))
    assert parameter_hash(mlp_teacher) == full.teacher_hash
