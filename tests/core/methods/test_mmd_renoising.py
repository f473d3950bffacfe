"""Alternating MMD re-noises conditionally (docs/methods.md#mmd-tests): the z_s that A and T receive in train_step is
the posterior draw q(z_s | z_t, sg x~) for the drawn (s, t), with no gradient path to the student, and sample() runs
the same posterior step by step, bit for bit.

All seeded and CPU-only. The network teacher (conftest.py) runs in float64, so the method draws its noise in float64
too; the draws of one `train_step` are replayed by `helpers.replay_mmd_step` in the order MMD.train_step documents
(s, delta, eps, n).
"""

from __future__ import annotations

import pytest
import torch

from core.methods.mmd import MMD
from core.posterior import posterior_sample
from core.samplers import ancestral, marginal
from core.schedules import CosineSchedule, time_grid

from . import helpers as h

F64 = torch.float64
SCHED = CosineSchedule()


def _col(c: torch.Tensor) -> torch.Tensor:
    return c[:, None]


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
    """The z_s that A (and T) receive is the conditional posterior draw for the drawn (s, t)."""
    assert rec["aux_z_s"] is rec["renoise_out"]
    torch.testing.assert_close(rec["aux_z_s"], exp["z_s"], rtol=0, atol=1e-13)


# ================================================================================================================
# Conditional re-noising
# ================================================================================================================

def test_mmd_train_step_renoises_with_the_conditional_posterior(mlp_teacher64):
    m = h.make_mmd(mlp_teacher64, student_steps=2)  # k = 2: delta ~ U[0, 1/2], so many examples clamp to t = 1
    for n in range(4):                     # two auxiliary turns (even n), two generator turns (odd n)
        batch = h.batch(n, dtype=F64)
        exp = h.replay_mmd_step(m, batch["x"], seed=10 + n)
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


def test_mmd_marginal_renoise_ablation_fails_the_conditional_check(mlp_teacher64):
    """The "marginal" ablation config (fresh-noise q(z_s | x~)) must be flagged by the conditional check; it agrees with
    the conditional draw only where t = 1."""
    m = h.make_mmd(mlp_teacher64, student_steps=2, renoise="marginal")
    for n in range(2):
        batch = h.batch(n, dtype=F64)
        exp = h.replay_mmd_step(m, batch["x"], seed=10 + n)
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
def test_mmd_sample_is_conditional_ancestral_bit_for_bit(mlp_teacher64, steps):
    m = h.make_mmd(mlp_teacher64, student_steps=steps)
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


def test_mmd_sample_has_no_grad(mlp_teacher64):
    m = h.make_mmd(mlp_teacher64, student_steps=2)
    noise = torch.randn(2, 8, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    out = m.sample(noise)
    assert not out.requires_grad and out.shape == (8, 2)
