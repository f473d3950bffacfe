"""EMD's plug-in contract (docs/methods.md#emd-tests): state round trip, TTUR bookkeeping, config validation,
one-step sampling, metrics and exact resume.
"""

from __future__ import annotations

import pytest
import torch

from core.method_specs import EMDConfig, build_method_config
from core.methods.emd import EMD
from core.nets import parameter_hash
from core.schedules import CosineSchedule

from . import helpers as h

F64 = torch.float64
SCHED = CosineSchedule()


# ================================================================================================================
# The plug-in contract (docs/methods.md#plumbing-tests)
# ================================================================================================================

def test_emd_state_round_trip_gives_identical_next_step(mlp_teacher):
    h.assert_ttur_round_trip(h.make_emd, mlp_teacher)


def test_emd_load_rejects_other_teacher(mlp_teacher):
    h.assert_rejects_other_teacher(h.make_emd, mlp_teacher)


def test_emd_ttur_bookkeeping_and_frozen_teacher(mlp_teacher):
    """G changes only when step % r == 0, A every step; the generator pass leaves A (and its .grad) alone; the
    teacher's parameters never change. A starts perturbed so that the very first G gradient is non-zero."""
    h.assert_ttur_bookkeeping(lambda: h.make_emd(mlp_teacher, aux=h.perturbed(mlp_teacher), ttur_ratio=3), mlp_teacher, r=3)


@pytest.mark.parametrize(("changes", "field"), [
    ({"gamma_eps": 0.0}, "gamma_eps"),
    ({"gamma_eps": -0.1}, "gamma_eps"),
    ({"gamma_eps": 1.5}, "gamma_eps"),  # |1 - gamma| > 1 diverges
    ({"gamma_z": -1e-3}, "gamma_z"),
    ({"langevin_steps": 0}, "langevin_steps"),
    ({"langevin_steps": 2.0}, "langevin_steps"),
    ({"ttur_ratio": 0}, "ttur_ratio"),
    ({"t_lo": 0.5, "t_hi": 0.5}, "t_lo"),
    ({"t_lo": 0.9, "t_hi": 0.1}, "t_hi"),
    ({"noise_cancel": "partial"}, "noise_cancel"),
    ({"weighting": "edm"}, "weighting"),
    ({"student_steps": 0}, "student_steps"),
    ({"lr_aux": 0.0}, "lr_aux"),
])
def test_emd_config_validation_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        EMDConfig(**changes)


def test_emd_config_accepts_edges():
    EMDConfig(gamma_z=0.0, langevin_steps=1, ttur_ratio=1, gamma_eps=1.0)  # the Diff-Instruct limit is legal


def test_emd_is_one_step_only(mlp_teacher):
    for kwargs in ({"student_steps": 2}, {"sets": ["student_steps=4"]}):
        with pytest.raises(ValueError, match="student_steps"):
            build_method_config("emd", **kwargs)
    with pytest.raises(ValueError, match="gamma_eps"):
        build_method_config("emd", sets=["gamma_eps=0"])
    with pytest.raises(ValueError, match="langevin_steps"):
        build_method_config("emd", preset="toy2d", sets=["langevin_steps=0"])
    assert build_method_config("emd", preset="k8").langevin_steps == 8
    with pytest.raises(ValueError, match="student_steps"):
        EMD(mlp_teacher, EMDConfig(student_steps=2), total_steps=10)


def test_emd_sample_is_one_step(mlp_teacher):
    m = h.make_emd(mlp_teacher)
    h.assert_one_step_sample(m)
    assert float(m.t_gen) == pytest.approx(float(SCHED.t_from_log_snr(torch.tensor(-6.0, dtype=F64))))


def test_emd_metric_keys_namespaced_and_finite(mlp_teacher):
    m = h.make_emd(mlp_teacher, ttur_ratio=2)
    steps = h.train_steps(m, range(4))
    h.check_metrics(steps, required=h.TWO_NET_KEYS | {"emd/eps_tilde_norm", "emd/xi_drift_norm"})
    for n, metrics in enumerate(steps):
        gen_turn = n % 2 == 0
        assert {"loss/gen", "emd/eps_tilde_norm", "emd/xi_drift_norm"} <= set(metrics) if gen_turn \
            else not ({"loss/gen", "emd/eps_tilde_norm", "emd/xi_drift_norm"} & set(metrics)), n
        if gen_turn:
            assert metrics["emd/xi_drift_norm"] > 0.0  # gamma_z = 0.01 > 0: xi moves


def test_emd_run_training_resume_is_exact(mlp_teacher, tmp_path):
    teacher_hash = parameter_hash(mlp_teacher)
    full, _, resumed = h.assert_exact_resume(lambda: h.make_emd(mlp_teacher, ttur_ratio=2, total_steps=h.TRAIN.iterations),
                                             tmp_path, {"name": "emd-test", "kind": "student"})
    assert not torch.equal(full.student.net.body[0].weight, mlp_teacher.net.body[0].weight)  # it did train
    assert parameter_hash(mlp_teacher) == teacher_hash == full.teacher_hash == resumed.teacher_hash
