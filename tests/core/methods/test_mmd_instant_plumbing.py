"""MMD instant's plug-in contract (docs/methods.md#mmd-instant-tests): state round trip across the preconditioner
phase, config validation, metrics, exact resume, and a run on a diffusers UNet with attention.
"""

from __future__ import annotations

import math

import pytest
import torch

from core.method_specs import MMDInstantConfig
from core.nets import parameter_hash

from . import helpers as h

# ================================================================================================================
# The plug-in contract (docs/methods.md#plumbing-tests)
# ================================================================================================================

@pytest.mark.parametrize("cut", [2, 4])  # mid-phase (v accumulating, no Lambda yet) and in the distill phase
def test_mmd_instant_state_round_trip_gives_identical_next_steps(mlp_teacher, cut):
    kwargs = {"total_steps": 10, "precond_batches": 3, "student_steps": 4}
    m1 = h.make_mmd_instant(mlp_teacher, **kwargs)
    state = h.state_after(m1, cut)
    assert set(state["extra"]) == {"v", "precond"}
    assert (state["extra"]["precond"] is None) == (cut < 3)
    assert state["teacher_hash"] == parameter_hash(mlp_teacher)
    m2 = h.make_mmd_instant(mlp_teacher, **kwargs)
    m2.load_state_dict(state)
    assert m2.step == m1.step == cut
    h.assert_same_next_steps(m1, m2, range(cut, cut + 3), nets=("student",))
    for k in m1.v:
        assert torch.equal(m1.v[k], m2.v[k]) and torch.equal(m1.precond[k], m2.precond[k]), k


def test_mmd_instant_load_rejects_other_teacher(mlp_teacher):
    h.assert_rejects_other_teacher(lambda teacher: h.make_mmd_instant(teacher, precond_batches=2), mlp_teacher)


@pytest.mark.parametrize(("changes", "field"), [
    ({"lr_gen": 0.0}, "lr_gen"),
    ({"sigma_min": 80.0, "sigma_max": 80.0}, "sigma_min"),
    ({"sigma_min": 100.0}, "sigma_min"),
    ({"weighting": "edm2"}, "weighting"),
    ({"precond_batches": 0}, "precond_batches"),
    ({"precond_batches": 2.5}, "precond_batches"),
    ({"precond_beta2": 1.0}, "precond_beta2"),
    ({"precond_beta2": -0.1}, "precond_beta2"),
    ({"precond_eps": 0.0}, "precond_eps"),
    ({"student_steps": 0}, "student_steps"),
])
def test_mmd_instant_config_validation_names_the_field(changes, field):
    with pytest.raises(ValueError, match=f"^mmd-instant: {field}"):
        MMDInstantConfig(**changes)


def test_mmd_instant_metric_keys_namespaced_and_finite(mlp_teacher):
    m = h.make_mmd_instant(mlp_teacher, total_steps=6, precond_batches=2)
    required = {"loss/gen", "loss/teacher", "grad_norm/gen", "lr/gen", "stats/x_mean", "stats/x_std", "time/step_s",
                "mmd/moment_norm", "mmd/precond_progress"}
    h.check_metrics(h.train_steps(m, range(4)), required=required)


TRAIN = h.TRAIN.replace(iterations=10, checkpoint_every=4, preview_every=5, preview_seeds=tuple(range(8)))


@pytest.mark.parametrize("stop", [2, 5])  # inside the preconditioner phase, and after it
def test_mmd_instant_run_training_resume_is_exact_across_the_phase_boundary(mlp_teacher, tmp_path, stop):
    kwargs = {"precond_batches": 3, "student_steps": 4, "total_steps": TRAIN.iterations}
    full, part, resumed = h.assert_exact_resume(lambda: h.make_mmd_instant(mlp_teacher, **kwargs), tmp_path,
                                                {"name": "mmd-instant-test", "kind": "student"}, nets=("student",),
                                                stop_after=stop, train=TRAIN, log_steps=None)
    assert (part.precond is None) == (stop < 3)
    assert any(not torch.equal(p, q) for p, q in zip(full.student.parameters(), mlp_teacher.parameters()))
    for k in full.precond:
        assert torch.equal(full.precond[k], resumed.precond[k]) and torch.equal(full.v[k], resumed.v[k]), k
    assert parameter_hash(mlp_teacher) == full.teacher_hash


def test_mmd_instant_runs_on_a_diffusers_unet_with_attention():
    """Fused attention kernels lack forward-mode AD and double backward; the JVP must still work on a real UNet."""
    from core.denoisers import diffusers_denoiser
    from core.method_specs import MMDInstantConfig
    from core.methods.mmd_instant import MMDInstant
    from core.nets import build_unet
    from core.schedules import CosineSchedule

    torch.manual_seed(0)
    unet = build_unet(8, 1, num_classes=3, block_out_channels=(8, 16), attention=True)
    teacher = diffusers_denoiser(unet, CosineSchedule(), "v_prediction", num_classes=3).eval()
    m = MMDInstant(teacher, MMDInstantConfig(student_steps=2, precond_batches=1, warmup=0), total_steps=3)
    batch = {"x": torch.rand(4, 1, 8, 8) * 2 - 1, "cond": torch.tensor([0, 1, 2, 0])}
    before = [p.detach().clone() for p in m.student.parameters()]
    m.generator.manual_seed(0)
    m.train_step(batch)  # preconditioner phase
    m.generator.manual_seed(1)
    metrics = m.train_step(batch)  # distill phase: parameter-space JVP through attention
    assert all(math.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, m.student.parameters()))
