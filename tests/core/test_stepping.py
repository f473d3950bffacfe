"""The loop's stepping (core.stepping): gradient accumulation equals the whole batch, metrics stay tensors until read,
micro-batches split evenly or are refused."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from core.data import get_benchmark
from core.method_specs import build_method_config
from core.methods import build_method
from core.specs import TrainConfig
from core.stepping import Update, as_floats, run_iteration, split_batch
from core.teachers import load_teacher
from core.text_cond import TextCond


class Regression:
    """A deterministic Steppable: a small MLP fitted by MSE, so any split of a batch gives the same gradient."""

    grad_clip, precision = 100.0, "fp32"

    def __init__(self):
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).double()
        opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)
        self.optims = {"net": (opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))}
        self.step = 0

    def losses(self, batch):
        loss = (self.net(batch["x"]) - batch["y"]).pow(2).mean()
        yield Update("net", loss)
        return {"loss/mse": loss.detach()}


def _batches(n: int, size: int = 12) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(size, 3, generator=g, dtype=torch.float64),
             "y": torch.randn(size, 2, generator=g, dtype=torch.float64)} for _ in range(n)]


@pytest.mark.parametrize("parts", [2, 3, 4])
def test_gradient_accumulation_equals_the_whole_batch(parts):
    whole, accumulated = Regression(), Regression()
    for batch in _batches(5):
        m1 = as_floats(run_iteration(whole, [batch]))
        m2 = as_floats(run_iteration(accumulated, split_batch(batch, parts)))
        # float64 and a mean of equal-sized micro-batch means: equal up to summation order
        assert m2["loss/mse"] == pytest.approx(m1["loss/mse"], rel=1e-12)
        assert m2["grad_norm/net"] == pytest.approx(m1["grad_norm/net"], rel=1e-10)
    for p, q in zip(whole.net.parameters(), accumulated.net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert whole.step == accumulated.step == 5


def test_split_batch_keeps_conditions_and_sizes_and_refuses_uneven_splits():
    cond = TextCond(torch.arange(24.0).reshape(6, 2, 2))
    parts = split_batch({"x": torch.arange(6), "cond": cond, "size": torch.tensor(6)}, 3)
    assert [p["x"].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert torch.equal(parts[1]["cond"].embeds, cond.embeds[2:4]) and [int(p["size"]) for p in parts] == [2, 2, 2]
    with pytest.raises(ValueError, match="grad_accum: the batch of 6 does not split into 4"):
        split_batch({"x": torch.arange(6)}, 4)
    with pytest.raises(ValueError, match=r"^train: batch_size \(10\) must be a multiple of grad_accum \(4\)"):
        TrainConfig(batch_size=10, grad_accum=4)


def test_an_iteration_leaves_its_metrics_on_the_device():
    """The loop reads metrics once per logging row: run_iteration returns tensors (losses, grad norms, stats), not
    host floats, so no iteration waits for the device."""
    config = build_method_config("dmd2", sets=["ttur_ratio=1"])
    m = build_method(load_teacher("toy2d-ring"), config, total_steps=10)
    metrics = run_iteration(m, [get_benchmark("toy2d-ring").sample_batch(16, torch.Generator().manual_seed(0))])
    tensors = {k for k, v in metrics.items() if isinstance(v, torch.Tensor)}
    assert {k for k in metrics if not k.startswith("lr/")} == tensors
    assert {"loss/gen", "loss/aux", "grad_norm/gen", "grad_norm/aux", "dmd2/nan_count", "stats/x_std"} <= tensors


def test_a_distillation_run_accumulates_through_the_cli_path(tmp_path):
    """distill(grad_accum=4) trains every method's iteration on four micro-batches of a quarter: the run completes
    and records the setting; mmd-instant's phase switch happens once per iteration, not per micro-batch."""
    from workers.local import distill

    result = distill("toy2d-ring", "mmd-instant", tmp_path, preset="toy2d", iterations=6, batch_size=16, grad_accum=4,
                     sets=("precond_batches=3",))
    assert result["status"] == "completed"
    spec = json.loads((tmp_path / "student.json").read_text())
    assert spec["train"]["grad_accum"] == 4 and spec["train"]["batch_size"] == 16
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # one row per iteration (log_every 1): three preconditioner iterations, then three distillation iterations, none
    # mixing the two (all four micro-batches of iteration 3 estimate the preconditioner)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [("loss/teacher" in r, "loss/gen" in r) for r in rows] == [(True, False)] * 3 + [(False, True)] * 3
    assert rows[2]["mmd/precond_progress"] == 1.0
