"""DMD2's training loop (docs/methods.md#dmd2-tests): backward simulation equals the inference sampler, TTUR
bookkeeping, and the plug-in contract (state round trip, config validation, metrics, exact resume).

All seeded and CPU-only: the student runs in float64 with an injected noise bank where bit-for-bit equality is
checked, and on the small network teacher from conftest.py elsewhere.
"""

from __future__ import annotations

import pytest
import torch

from core.method_specs import DMD2Config
from core.nets import parameter_hash
from core.samplers import marginal

from . import helpers as h

F64 = torch.float64


# ================================================================================================================
# Backward simulation == the inference sampler (docs/methods.md#backward-simulation)
# ================================================================================================================

def _noise_bank(steps: int, batch: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(steps, batch, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("steps", [2, 4])
def test_dmd2_backward_simulation_matches_sampler(mlp_teacher64, steps):
    m = h.make_dmd2(mlp_teacher64, gan=False, student_steps=steps, has_data=False)
    m.student.eval()
    # The fixed grid t_i = 1 - i/N (docs/methods.md#backward-simulation).
    assert torch.equal(m.grid, torch.tensor([1.0 - i / steps for i in range(steps)] + [0.0], dtype=F64))
    noise = _noise_bank(steps)
    states = []
    out = marginal(noise, m.student, m.grid, None, callback=lambda s: states.append(dict(s)))
    assert [s["step"] for s in states] == list(range(steps))
    # DMD2.sample runs exactly this sampler on this grid.
    assert torch.equal(m.sample(noise, None, steps), out)
    assert torch.equal(out, states[-1]["x0_hat"])
    for k in range(steps):
        z_k = m.backward_simulate(noise, None, k)
        assert z_k.dtype == F64
        assert torch.equal(z_k, states[k]["z_t"]), k
        with torch.no_grad():
            x_k = m.student(z_k, m.grid[k].expand(z_k.shape[0]), None)
        assert torch.equal(x_k, states[k]["x0_hat"]), k
        if k == 0:
            assert torch.equal(z_k, noise[0])  # pure noise, never a re-noised sample
        else:
            assert not z_k.requires_grad and z_k.grad_fn is None
    # With grad enabled on the student's parameters the training output at k does carry a graph (sanity).
    assert m.student(m.backward_simulate(noise, None, steps - 1), m.grid[steps - 1].expand(32), None).requires_grad


@pytest.mark.parametrize("steps", [2, 4])
def test_dmd2_each_renoising_uses_its_own_draw(mlp_teacher64, steps):
    m = h.make_dmd2(mlp_teacher64, gan=False, student_steps=steps, has_data=False)
    m.student.eval()
    noise = _noise_bank(steps)
    base = [m.backward_simulate(noise, None, k) for k in range(steps)]
    for j in range(steps):
        changed = noise.clone()
        changed[j] = torch.randn(changed[j].shape, generator=torch.Generator().manual_seed(100 + j), dtype=F64)
        for k in range(steps):
            z = m.backward_simulate(changed, None, k)
            if k >= j:
                # z_{t_k} depends on xi and on eps_1..eps_k, each of them separately.
                assert (z != base[k]).all(), (j, k)
            else:
                assert torch.equal(z, base[k]), (j, k)
    # Extra draws beyond k are ignored: backward_simulate(k) reads only noise[: k + 1].
    assert torch.equal(m.backward_simulate(noise[:2], None, 1), base[1])


def test_dmd2_train_step_draws_k_uniformly_and_feeds_the_simulated_input(mlp_teacher):
    m = h.make_dmd2(mlp_teacher, gan=False, student_steps=4, ttur_ratio=1)
    # Documented order: k first, then the noise bank [k + 1, B, ...]; the input is backward_simulate of that bank.
    for seed in range(8):
        m.generator.manual_seed(seed)
        z_in, t_in = m.generator_input({}, 16, None)
        m.generator.manual_seed(seed)
        k = int(torch.randint(0, 4, (1,), generator=m.generator))
        bank = m.randn((k + 1, 16, 2))
        assert torch.equal(t_in, m.grid[k].expand(16))
        assert torch.equal(z_in, m.backward_simulate(bank, None, k))
    # train_step draws k from the generator each step: all of 0..3 occur, roughly uniformly.
    seen = []
    original = m.generator_input

    def spy(batch, b, cond):
        z, t = original(batch, b, cond)
        seen.append(int(torch.nonzero(m.grid == t[0])[0, 0]))
        return z, t

    m.generator_input = spy
    for n in range(40):
        m.generator.manual_seed(1000 + n)
        m.train_step(h.batch(n, 16))
    assert len(seen) == 40 and set(seen) == {0, 1, 2, 3}
    del m.generator_input
    counts = torch.zeros(4)
    for n in range(400):
        m.generator.manual_seed(5000 + n)
        counts[int(torch.nonzero(m.grid == m.generator_input({}, 1, None)[1][0])[0, 0])] += 1
    assert bool((counts > 60).all()) and bool((counts < 140).all()), counts  # 100 +- 4 sd


# ================================================================================================================
# TTUR bookkeeping
# ================================================================================================================

def test_dmd2_ttur_steps_generator_every_rth_iteration_and_fake_every_iteration(mlp_teacher):
    teacher_hash = parameter_hash(mlp_teacher)
    m = h.make_dmd2(mlp_teacher, gan=True, ttur_ratio=3, student_steps=2)
    after_gen: list[dict] = []
    fake_loss = m.fake_loss

    def after_gen_step():
        after_gen.append({
            "fake_grads": [p.grad for p in m.fake.parameters()],
            "head_grads": [p.grad for p in m.head.parameters()],
            "changed": {k: not torch.equal(v, p) for k, v, p in
                        ((k, before["fake"][k], p) for k, p in m.fake.named_parameters())},
        })

    def spy_fake(x, batch, cond, b):
        assert not x.requires_grad  # sg x
        assert all(p.grad is None for p in m.student.parameters())
        assert all(p.requires_grad for p in m.fake_params)  # A and H are unfrozen again after the generator pass
        return fake_loss(x, batch, cond, b)

    h.spy_updates(m, lambda update, params: after_gen_step if update.optim == "gen" else None)
    m.fake_loss = spy_fake
    r = 3
    for n in range(7):
        before = {"student": h.snapshot(m.student), "fake": h.snapshot(m.fake), "head": h.snapshot(m.head)}
        m.generator.manual_seed(n)
        metrics = m.train_step(h.batch(n))
        assert ("loss/gen" in metrics) == (n % r == 0), n
        student_changed = [not torch.equal(p, before["student"][k]) for k, p in m.student.named_parameters()]
        if n % r == 0:
            assert all(student_changed), n
        else:
            assert not any(student_changed), n
        assert all(not torch.equal(p, before["fake"][k]) for k, p in m.fake.named_parameters()), n
        assert all(not torch.equal(p, before["head"][k]) for k, p in m.head.named_parameters()), n
    assert len(after_gen) == 3
    for rec in after_gen:
        assert all(g is None for g in rec["fake_grads"]) and all(g is None for g in rec["head_grads"])
        assert not any(rec["changed"].values())      # the generator pass itself leaves A alone
    assert parameter_hash(mlp_teacher) == teacher_hash
    assert parameter_hash(m.teacher) == teacher_hash


# ================================================================================================================
# The plug-in contract (docs/methods.md#plumbing-tests)
# ================================================================================================================


def test_dmd2_state_round_trip_gives_identical_next_step(mlp_teacher):
    m1 = h.make_dmd2(mlp_teacher, seed=0, gan=True, ttur_ratio=3, student_steps=2)
    state = h.state_after(m1, 4)
    m2 = h.make_dmd2(mlp_teacher, seed=1, gan=True, ttur_ratio=3, student_steps=2)  # different head init
    m2.load_state_dict(state)
    assert m2.step == m1.step == 4
    steps = (4, 5, 6)  # 4, 5: fake-only turns; 6: a generator turn
    for n, out in zip(steps, h.assert_same_next_steps(m1, m2, steps, nets=("student", "fake", "head")), strict=True):
        assert ("loss/gen" in out) == (n % 3 == 0)


def test_dmd2_load_rejects_other_teacher(mlp_teacher):
    h.assert_rejects_other_teacher(lambda teacher: h.make_dmd2(teacher, gan=False), mlp_teacher)


@pytest.mark.parametrize(("changes", "field"), [
    ({"ttur_ratio": 0}, "ttur_ratio"),
    ({"ttur_ratio": -2}, "ttur_ratio"),
    ({"lr_gen": 0.0}, "lr_gen"),
    ({"lr_gen": -1e-4}, "lr_gen"),
    ({"t_lo": 0.5, "t_hi": 0.5}, "t_lo"),
    ({"t_lo": 0.9, "t_hi": 0.1}, "t_hi"),
    ({"student_steps": 0}, "student_steps"),
])
def test_dmd2_config_validation_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        DMD2Config(**changes)


def test_dmd2_config_round_trips_and_gan_needs_data(mlp_teacher):
    cfg = DMD2Config(**h.TOY, ttur_ratio=3, student_steps=4)
    assert DMD2Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="gan"):
        h.make_dmd2(mlp_teacher, gan=True, has_data=False)
    h.make_dmd2(mlp_teacher, gan=False, has_data=False)  # data-free DMD2 is fine


def test_dmd2_metric_keys_namespaced_and_finite(mlp_teacher):
    m = h.make_dmd2(mlp_teacher, gan=True, ttur_ratio=2, student_steps=2)
    steps = h.train_steps(m, range(4))
    h.check_metrics(steps, required={"loss/gen", "loss/aux", "loss/disc", "grad_norm/gen", "grad_norm/aux", "lr/gen",
                                     "stats/x_mean", "stats/x_std", "time/step_s", "dmd2/nan_count"})
    for metrics in steps:
        if "loss/gen" in metrics:  # L = L_DM + lambda_G L_G,gan (docs/methods.md#dmd2)
            expected = metrics["loss/dm"] + m.config.gan_weight_gen * metrics["loss/gen_gan"]
            assert metrics["loss/gen"] == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_dmd2_run_training_resume_is_exact(mlp_teacher, tmp_path):
    kwargs = {"gan": True, "ttur_ratio": 2, "student_steps": 2, "total_steps": h.TRAIN.iterations}
    h.assert_exact_resume(lambda: h.make_dmd2(mlp_teacher, seed=0, **kwargs), tmp_path, {"name": "dmd2-test", "kind": "student"},
                          nets=("student", "fake", "head"),
                          make_resumed=lambda: h.make_dmd2(mlp_teacher, seed=1, **kwargs))  # a fresh object, other head init
