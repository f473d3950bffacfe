"""Helpers shared by the method tests (DMD2, EMD, Diff-Instruct, MMD, MMD-instant): seeded toy batches, parameter
snapshots, the metric-key check, the state round trip and the exact-resume check through `run_training`."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from core.data import get_benchmark
from core.method_specs import DMD2Config, EMDConfig, MMDConfig, MMDInstantConfig
from core.methods.dmd2 import DMD2
from core.methods.emd import EMD
from core.methods.mmd import MMD
from core.methods.mmd_instant import MMDInstant
from core.nets import parameter_hash
from core.posterior import posterior_coefficients
from core.specs import TrainConfig
from core.time_sampling import karras_t
from core.train import run_training

BENCH = get_benchmark("toy2d-ring")
METRIC_KEY = re.compile(r"^[a-z0-9_]+(/[a-z0-9_]+)+$")
# the metrics every step-alternating two-network method (EMD, Diff-Instruct, MMD) reports over a few steps
TWO_NET_KEYS = frozenset({"loss/gen", "loss/aux", "grad_norm/gen", "grad_norm/aux", "lr/gen", "lr/aux", "stats/x_mean",
                          "stats/x_std", "time/step_s"})
TRAIN = TrainConfig(iterations=12, batch_size=64, checkpoint_every=5, log_every=3, preview_every=6, ema_decay=0.0,
                    preview_seeds=tuple(range(16)))


def batch(n: int, size: int = 64, dtype: torch.dtype = torch.float32) -> dict:
    """A toy2d-ring batch seeded by n (the benchmark's batches hold only "x")."""
    return {"x": BENCH.sample_batch(size, torch.Generator().manual_seed(n))["x"].to(dtype)}


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in module.named_parameters()}


def changed(module: nn.Module, before: dict[str, torch.Tensor]) -> list[bool]:
    return [not torch.equal(p, before[k]) for k, p in module.named_parameters()]


def no_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def train_steps(m, steps: Iterable[int], seed_offset: int = 0) -> list[dict]:
    """Run m.train_step(batch(n)) for each n, seeding m.generator with seed_offset + n first; returns the metrics."""
    out = []
    for n in steps:
        m.generator.manual_seed(seed_offset + n)
        out.append(m.train_step(batch(n)))
    return out


def check_metrics(metrics: dict | Iterable[dict], required: Iterable[str] = ()) -> set[str]:
    """Every key namespaced (METRIC_KEY), every value a finite float, and the union of keys holds `required`."""
    seen: set[str] = set()
    for one in [metrics] if isinstance(metrics, dict) else metrics:
        for k, v in one.items():
            assert METRIC_KEY.match(k), k
            assert isinstance(v, float) and math.isfinite(v), (k, v)
        seen |= set(one)
    required = set(required)
    assert required <= seen, required - seen
    return seen


def assert_same_next_steps(m1, m2, steps: Iterable[int], nets: Iterable[str] = ("student", "aux")) -> list[dict]:
    """m1 and m2 (loaded from m1's state) give identical time-free metrics on the same seeded steps (generator seed
    100 + n), and end with identical parameters in `nets`. Returns m1's time-free metrics per step."""
    outs = []
    for n in steps:
        out = []
        for m in (m1, m2):
            m.generator.manual_seed(100 + n)
            out.append(no_time(m.train_step(batch(n))))
        assert out[0] == out[1], n
        outs.append(out[0])
    for name in nets:
        for (k, p), q in zip(m1.nets[name].named_parameters(), m2.nets[name].parameters(), strict=True):
            assert torch.equal(p, q), (name, k)
    return outs


def state_after(m, steps: int) -> dict:
    """Train m for `steps` seeded steps (train_steps) and return a deep copy of its state."""
    train_steps(m, range(steps))
    return copy.deepcopy(m.state_dict())


def metric_rows(folder: Path) -> list[dict]:
    return [no_time(json.loads(line)) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]


def assert_exact_resume(make: Callable[[], object], tmp_path: Path, spec: dict, nets: Iterable[str] = ("student", "aux"),
                        stop_after: int = 7, train: TrainConfig = TRAIN, make_resumed: Callable[[], object] | None = None,
                        log_steps: Sequence[int] | None = (3, 6, 9, 12)):
    """Run uninterrupted; run again stopped by should_stop after `stop_after` steps and resume it in a fresh object
    (`make_resumed`, default `make`); the nets' state dicts must be bit-identical and the time-free metrics.jsonl rows
    equal (and, unless log_steps is None, logged at exactly those steps). Returns (full, part, resumed)."""
    full = make()
    res = run_training(full, BENCH.sample_batch, train, out_dir=tmp_path / "full", spec=spec)
    assert res.status == "completed" and res.step == train.iterations

    calls = []
    part = make()
    res = run_training(part, BENCH.sample_batch, train, out_dir=tmp_path / "cut", spec=spec,
                       should_stop=lambda: calls.append(1) or len(calls) >= stop_after)
    assert res.status == "stopped" and res.step == stop_after
    resumed = (make_resumed or make)()
    res = run_training(resumed, BENCH.sample_batch, train, out_dir=tmp_path / "cut", spec=spec)
    assert res.status == "completed" and res.step == train.iterations

    for name in nets:
        a, b = full.nets[name].state_dict(), resumed.nets[name].state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert resumed.step == full.step == train.iterations

    rows = metric_rows(tmp_path / "full")
    assert rows == metric_rows(tmp_path / "cut")
    if log_steps is not None:
        assert [r["step"] for r in rows] == list(log_steps)
    return full, part, resumed


def perturbed(den: nn.Module, scale: float = 0.05, seed: int = 0) -> nn.Module:
    """A trainable copy of `den` with every parameter jittered, so A != T (and Delta != 0) from the start."""
    out = copy.deepcopy(den).requires_grad_(True).train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return out


def assert_ttur_round_trip(make: Callable[..., object], teacher: nn.Module) -> None:
    """A TTUR method (ratio 3) saved after 4 steps and loaded into a fresh one takes the same next steps: 4 and 5 are
    auxiliary-only turns, 6 a generator turn; its stored config reads back as the one it ran with."""
    m1 = make(teacher, ttur_ratio=3)
    state = state_after(m1, 4)
    assert state["config"] == m1.config.to_dict() and type(m1.config).from_dict(state["config"]) == m1.config
    m2 = make(teacher, ttur_ratio=3)
    m2.load_state_dict(state)
    assert m2.step == m1.step == 4
    steps = (4, 5, 6)
    for n, out in zip(steps, assert_same_next_steps(m1, m2, steps), strict=True):
        assert ("loss/gen" in out) == (n % 3 == 0)


def assert_rejects_other_teacher(make: Callable[[nn.Module], object], teacher: nn.Module) -> None:
    """A state saved with `teacher` does not load into a method built on a (slightly) different teacher."""
    state = make(teacher).state_dict()
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        other.net.body[-1].bias.add_(1e-3)
    with pytest.raises(ValueError, match="teacher"):
        make(other).load_state_dict(state)


def spy_updates(m, record: Callable, *, step: bool = True) -> None:
    """Wrap m.losses: record(update, params, after) sees every Update the method yields, with the parameters its
    optimizer updates; after() is called once the loop has stepped it. step=False withholds the updates (nothing is
    stepped), as if the loop only looked."""
    original = m.losses

    def spy(batch_):
        steps = original(batch_)
        while True:
            try:
                update = next(steps)
            except StopIteration as stop:
                return stop.value
            params = [p for g in m.optims[update.optim][0].param_groups for p in g["params"]]
            after = record(update, params)
            if step:
                yield update
                if after is not None:
                    after()

    m.losses = spy


def assert_ttur_bookkeeping(make: Callable[[], object], teacher: nn.Module, r: int, steps: int = 7) -> None:
    """For a student/aux method with ttur_ratio r (EMD, Diff-Instruct): G changes only when step % r == 0, A every
    step; no .grad is left behind; the generator pass leaves A (and its .grad) alone; the teacher never changes."""
    teacher_hash = parameter_hash(teacher)
    m = make()
    after_gen: list = []
    before: dict = {}

    def after():
        after_gen.append(([p.grad for p in m.aux.parameters()],
                          all(torch.equal(p, before["aux"][k]) for k, p in m.aux.named_parameters())))

    spy_updates(m, lambda update, params: after if update.optim == "gen" else None)
    for n in range(steps):
        before = {"student": snapshot(m.student), "aux": snapshot(m.aux)}
        m.generator.manual_seed(n)
        metrics = m.train_step(batch(n))
        assert ("loss/gen" in metrics) == (n % r == 0), n
        moved = changed(m.student, before["student"])
        assert all(moved) if n % r == 0 else not any(moved), n
        assert all(changed(m.aux, before["aux"])), n
        assert all(p.grad is None for p in m.student.parameters()) and all(p.grad is None for p in m.aux.parameters())
    assert len(after_gen) == len(range(0, steps, r))
    for grads, aux_unchanged in after_gen:
        assert all(g is None for g in grads) and aux_unchanged
    assert parameter_hash(teacher) == teacher_hash == m.teacher_hash
    assert parameter_hash(m.teacher) == teacher_hash


def assert_one_step_sample(m, b: int = 16) -> None:
    """A one-step student: sample() takes only steps == 1 (the default), returns no graph, and is G(xi, t_gen)."""
    xi = torch.randn(b, 2, generator=torch.Generator().manual_seed(0))
    for steps in (0, 2, 4):
        with pytest.raises(ValueError, match="steps"):
            m.sample(xi, None, steps)
    out = m.sample(xi, None, 1)
    assert not out.requires_grad and out.shape == xi.shape
    assert torch.equal(out, m.sample(xi)) and torch.equal(out, m.sample(xi[None], None, 1))
    with torch.no_grad():
        assert torch.equal(out, m.student(xi, m.t_gen.expand(b), None))


def assert_update_toward_teacher(g: torch.Tensor, delta) -> None:
    """Samples at the teacher's ring + delta (docs/methods.md#emd-tests): the batch-mean descent direction -mean(g)
    points back, along -delta (and nearly parallel to it)."""
    d = torch.tensor(delta, dtype=torch.float64)
    step = -g.mean(0)  # batch-mean descent direction on the samples
    assert float(step @ -d) > 0.0
    assert float(step @ -d) / (float(step.norm()) * float(d.norm())) > 0.9


def assert_small_gradient_with_dsm_fitted_aux(grad: Callable[[tuple], torch.Tensor]) -> None:
    """The statistical check for EMD / Diff-Instruct (docs/methods.md#emd-tests), `grad(delta)` being g with A fitted
    by DSM on exact student samples (conftest.dsm_fitted_ring(delta)): the batch-mean |g| at delta = 0 must stay below
    20% of its value at |delta| = 0.3 (measured ratio ~0.04 ("dmd") and ~0.03 ("unit")), and the shifted cases still
    point the update toward the teacher."""
    at_zero = float(grad((0.0, 0.0)).norm(dim=1).mean())
    for delta in ((0.3, 0.0), (0.0, -0.3)):
        g = grad(delta)
        assert at_zero < 0.2 * float(g.norm(dim=1).mean()), (at_zero, float(g.norm(dim=1).mean()), delta)
        assert float(-g.mean(0) @ -torch.tensor(delta, dtype=torch.float64)) > 0.0


# -- builders shared by a method's test files -------------------------------------------------------------------
TOY = {"sigma_data": 1.42, "lr_gen": 1e-3, "lr_aux": 1e-3}  # the ring's data std; lr 1e-3 moves short tests quickly
MMD_INSTANT_TOY = {"sigma_data": 1.42, "lr_gen": 1e-3, "precond_batches": 2}  # and a short Lambda phase


def make_dmd2(teacher, seed: int = 0, total_steps: int = 50, has_data: bool = True, **config) -> DMD2:
    """A DMD2 whose randomly initialised GAN head depends only on `seed` (global RNG state is left untouched)."""
    cfg = DMD2Config(**{**TOY, **config})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return DMD2(teacher, cfg, total_steps=total_steps, has_data=has_data)


def make_mmd(teacher, total_steps: int = 50, **config) -> MMD:
    return MMD(teacher, MMDConfig(**{**TOY, **config}), total_steps=total_steps)


def make_mmd_instant(teacher, total_steps: int = 20, shift: float = 0.0, **config) -> MMDInstant:
    m = MMDInstant(teacher, MMDInstantConfig(**{**MMD_INSTANT_TOY, **config}), total_steps=total_steps)
    if shift:
        with torch.no_grad():
            m.student.net.body[-1].bias.add_(shift)  # the output bias of the MLP inside the student
    return m


def make_emd(teacher, total_steps: int = 50, aux=None, **config) -> EMD:
    return EMD(teacher, EMDConfig(**{**TOY, **config}), total_steps=total_steps, aux=aux)


def replay_mmd_step(m: MMD, x: torch.Tensor, seed: int) -> dict:
    """The draws of one MMD train_step after m.generator.manual_seed(seed), in the documented order s, delta, eps, n,
    and everything that follows from them with the networks as they are *before* the step."""
    cfg, b = m.config, x.shape[0]
    g = torch.Generator().manual_seed(seed)
    s = karras_t(b, m.schedule, cfg.sigma_min, cfg.sigma_max, cfg.rho, g)
    delta = torch.rand(b, generator=g, dtype=torch.float64) / cfg.student_steps
    t = (s + delta).clamp(max=m.schedule.t_max)
    eps = torch.randn(tuple(x.shape), generator=g, dtype=m.dtype)
    n = torch.randn(tuple(x.shape), generator=g, dtype=m.dtype)
    z_t = m.schedule.alpha(t)[:, None].to(x.dtype) * x + m.schedule.sigma(t)[:, None].to(x.dtype) * eps
    with torch.no_grad():
        x_tilde = m.student(z_t, t, None)
    c_z, c_x, var = posterior_coefficients(m.schedule, s, t)
    # The posterior draw written out (docs/methods.md#posterior): z_s = c_z z_t + c_x sg(x~) + sqrt(var) n.
    z_s = c_z[:, None].to(x.dtype) * z_t + c_x[:, None].to(x.dtype) * x_tilde + var.sqrt()[:, None].to(x.dtype) * n
    return {"s": s, "t": t, "eps": eps, "n": n, "z_t": z_t, "x_tilde": x_tilde, "z_s": z_s, "c_z": c_z}
