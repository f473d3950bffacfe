"""Optimizer stepping for every trainable task, owned by the training loop (docs/methods.md#the-plug-in-contract).

A task's `losses(batch)` is a generator: it yields one `Update` per optimizer it wants stepped this iteration (the loss
and the key of `task.optims` whose parameters it updates) and returns its metrics. `run_iteration` drives it: each
yielded loss is backpropagated at once (so its graph is freed before the next loss is built, as when methods stepped
themselves), gradients are clipped, the optimizer and its LR schedule step, and the gradients are released. With
several micro-batches (gradient accumulation) each loss is scaled by 1 / micro-batches and the optimizers step after
the last one. The task's forward passes run under autocast in bf16 when `task.precision` asks for it, with the
parameters, optimizer states and gradients kept in fp32.

Metrics stay tensors on the device: the loop adds them up and reads them once per logging interval, so an iteration
never waits for the device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from core.knobs import PRECISIONS


@dataclass(frozen=True)
class Update:
    optim: str                 # the key in task.optims of the optimizer this loss steps
    loss: torch.Tensor         # a scalar with a graph to that optimizer's parameters
    label: str = ""            # metric suffix for grad_norm/ and lr/ (default: the optimizer's key)


class Steppable(Protocol):
    step: int                                  # iterations done; the loop's run_iteration advances it
    optims: dict[str, tuple]                   # name -> (optimizer, LR scheduler)
    grad_clip: float
    precision: str                             # one of core.knobs.PRECISIONS

    def losses(self, batch: dict) -> Iterator[Update]: ...


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16}
assert set(AUTOCAST_DTYPES) == set(PRECISIONS)


def autocast(precision: str, device: torch.device | str):
    """The forward passes' context: autocast to bf16 (fp32 master weights), or nothing for fp32."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def split_batch(batch: dict, parts: int) -> list[dict]:
    """`parts` equal micro-batches of a batch dict along its first dimension ("size", a batch size, is divided)."""
    if parts == 1:
        return [batch]
    out = [{} for _ in range(parts)]
    for key, value in batch.items():
        if key == "size":
            for micro in out:
                micro[key] = torch.div(value, parts, rounding_mode="floor")
            continue
        n = len(value)
        if n % parts:
            raise ValueError(f"grad_accum: the batch of {n} does not split into {parts} equal micro-batches")
        m = n // parts
        for i, micro in enumerate(out):
            micro[key] = value[i * m:(i + 1) * m]
    return out


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _add(metrics: dict, new: dict, scale: float) -> None:
    """metrics += scale * new, key by key (micro-batch means; scale 1 leaves values untouched)."""
    for key, value in new.items():
        if isinstance(value, torch.Tensor):
            value = value.detach()
        if scale != 1:
            value = value * scale
        metrics[key] = metrics[key] + value if key in metrics else value


def run_iteration(task: Steppable, batches: Sequence[dict], device: torch.device | str = "cpu") -> dict:
    """One training iteration over `batches` (micro-batches of one batch): backward, clip, step, schedule for every
    optimizer the task's losses name; returns the metrics (tensors or floats; micro-batch means) with grad_norm/ and
    lr/ per optimizer. Advances task.step by one."""
    n = len(batches)
    scale = 1.0 / n
    metrics: dict = {}
    pending: dict[str, str] = {}   # optimizers with gradients waiting for their step -> metric label
    for i, batch in enumerate(batches):
        steps = task.losses(batch)
        while True:
            with autocast(task.precision, device):
                try:
                    update = next(steps)
                except StopIteration as stop:
                    _add(metrics, stop.value or {}, scale)
                    break
            if i == n - 1 and update.optim not in pending:  # complete: step now, freeing it before the next loss
                metrics.update(step_update(task, update))
                continue
            (update.loss * scale).backward()
            pending.setdefault(update.optim, update.label or update.optim)
            if i == n - 1:
                metrics.update(_step(task, update.optim, pending.pop(update.optim)))
    for name, label in pending.items():  # an optimizer the last micro-batch did not name
        metrics.update(_step(task, name, label))
    task.step += 1
    return metrics


def step_update(task: Steppable, update: Update) -> dict:
    """Backward one loss and step its optimizer and schedule: {grad_norm/label, lr/label}."""
    update.loss.backward()
    return _step(task, update.optim, update.label or update.optim)


def _step(task: Steppable, name: str, label: str) -> dict:
    optimizer, scheduler = task.optims[name]
    out = {f"lr/{label}": scheduler.get_last_lr()[0],
           f"grad_norm/{label}": nn.utils.clip_grad_norm_(_params(optimizer), task.grad_clip)}
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return out


def as_floats(metrics: dict) -> dict[str, float]:
    """Metrics read back to the host (one synchronisation for all of them)."""
    tensors = {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor)}
    if tensors:
        values = torch.stack([v.double().reshape(()) for v in tensors.values()]).tolist()
        tensors = dict(zip(tensors, values))
    return {k: float(tensors.get(k, v)) for k, v in metrics.items()}


class SteppedTask:
    """For tasks stepped by run_iteration: `train_step(batch)` runs one iteration outside the loop (tests and
    benchmarks), with the metrics read back as floats."""

    device: torch.device | str

    def train_step(self, batch: dict) -> dict[str, float]:
        return as_floats(run_iteration(self, [batch], self.device))
