"""The one training loop, for teachers and every distillation method.

A task (a teacher trainer or a method) provides `losses(batch)` with its `optims`, `grad_clip` and `precision` (the
core.stepping contract: the loop does backward, clipping, optimizer and schedule steps, gradient accumulation and mixed
precision), `state_dict()`, `load_state_dict()`, a `generator` it draws all its randomness from, `ema_source()` (the
network to average and ship) and `preview(seeds, module)`. The loop owns seeding, stepping, EMA, checkpoints, resume,
previews, progress and the cooperative stop. Metrics stay on the device between logging rows. Step n draws its batch
from step_seed(seed, n, 0) and re-seeds the task's generator with step_seed(seed, n, 1), so a resumed run equals an
uninterrupted one bit for bit.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from core.checkpoints import checkpoint_path, list_checkpoints, load_state, save_state
from core.images import grid_image, prompt_grid_image, scatter_image, to_uint8
from core.lora import shipped_state
from core.noise import step_generator, step_seed
from core.specs import TrainConfig
from core.stepping import Steppable, as_floats, run_iteration, split_batch


class Trainable(Steppable, Protocol):
    generator: torch.Generator

    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def ema_source(self) -> nn.Module: ...
    def preview(self, seeds: tuple[int, ...], module: nn.Module) -> torch.Tensor: ...


@dataclass(frozen=True)
class TrainResult:
    status: str            # "completed" or "stopped"
    step: int              # steps done
    model_path: Path | None
    elapsed_s: float


def _ema_update(ema: nn.Module, src: nn.Module, decay: float) -> None:
    with torch.no_grad():
        ema_p = [p for p in ema.parameters()]
        src_p = [p.detach() for p in src.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - decay)
        for b_ema, b in zip(ema.buffers(), src.buffers()):
            b_ema.copy_(b)


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric rows written after the checkpoint we resume from."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in keep))


def save_preview(images: torch.Tensor, path: Path, title: str, captions: Sequence[str] | None = None) -> Path:
    """A preview PNG: a scatter for 2-D points, a grid for images; with `captions` (a text-to-image run's prompt per
    image) one row per prompt under its text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if images.ndim == 2:
        scatter_image(images.detach().cpu().numpy(), title=title).save(path)
    elif captions:
        prompt_grid_image(to_uint8(images), captions, title=title).save(path)
    else:
        grid_image(to_uint8(images), title=title).save(path)
    return path


def export_model(module: nn.Module, path: Path, meta: dict) -> Path:
    """The shipped artifact: the network's state dict (a LoRA student's: its adapters) in safetensors plus a JSON sidecar
    with the spec."""
    return save_state(path, shipped_state(module), meta)


def snapshot_path(out_dir: Path | str, step: int) -> Path:
    """Where run_training exports the network as it was at checkpoint `step` (what export_model writes)."""
    return checkpoint_path(Path(out_dir) / "snapshots", step)


def list_snapshots(out_dir: Path | str) -> list[tuple[int, Path]]:
    """(step, path) of every exported snapshot of a run folder, oldest first; each loads like model.safetensors."""
    return list_checkpoints(Path(out_dir) / "snapshots")


def run_training(
    task: Trainable,
    sample_batch: Callable[[int, torch.Generator], dict],
    config: TrainConfig,
    *,
    out_dir: Path | str,                              # checkpoints/, snapshots/, previews/, metrics.jsonl, model.safetensors
    spec: dict,                                       # JSON spec stored with every checkpoint and the model
    device: str | torch.device = "cpu",
    resume: bool = True,                              # continue from the latest checkpoint in out_dir
    on_progress: Callable[[dict], None] | None = None,  # {"step", "iterations", "metrics", "elapsed_s", ...}
    on_preview: Callable[[int, Path], None] | None = None,
    preview_captions: Sequence[str] | None = None,    # one per preview seed: the prompt it draws (text-to-image)
    on_checkpoint: Callable[[int, Path], None] | None = None,
    should_stop: Callable[[], bool] | None = None,    # polled every step; True -> checkpoint and return
) -> TrainResult:
    """Train `task` for config.iterations steps; returns how it ended.

    Every checkpoint also exports the shipped network (EMA weights when averaging) to snapshots/step-N.safetensors,
    the same file export_model writes: small, never pruned, so every checkpoint step stays sampleable. It is written
    before the checkpoint, so a checkpoint on disk (or reported to on_checkpoint) always has its snapshot."""
    # 1. Check invariants before any work.
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir, preview_dir = out_dir / "checkpoints", out_dir / "previews"
    metrics_path = out_dir / "metrics.jsonl"
    assert isinstance(task.generator, torch.Generator), "task.generator must be a torch.Generator"
    source = task.ema_source()
    ema = copy.deepcopy(source).requires_grad_(False).eval() if config.ema_decay > 0 else None

    # 2. Resume from the latest checkpoint, if any.
    start = 0
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}  # per key: generator metrics appear only on generator turns
    found = list_checkpoints(ckpt_dir) if resume else []
    if found:
        state, _ = load_state(found[-1][1], device=device)
        task.load_state_dict(state["task"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        start = int(state["step"])
        task.step = start
        _truncate_metrics(metrics_path, start)
        # The partial logging interval, so the first row after a resume averages the same steps.
        sums, counts = dict(state.get("log_sums") or {}), dict(state.get("log_counts") or {})
    elif metrics_path.exists():
        metrics_path.unlink()

    def checkpoint(step: int) -> Path:
        export_model(ema if ema is not None else source, snapshot_path(out_dir, step), {"spec": spec, "step": step})
        path = save_state(checkpoint_path(ckpt_dir, step),
                          {"task": task.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                           "step": step, "log_sums": as_floats(sums), "log_counts": dict(counts)},
                          {"spec": spec, "step": step})
        for _, old in list_checkpoints(ckpt_dir)[:-config.keep_checkpoints]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
        if on_checkpoint:
            on_checkpoint(step, path)
        return path

    def preview(step: int) -> None:
        module = ema if ema is not None else source
        images = task.preview(tuple(config.preview_seeds), module)
        path = save_preview(images, preview_dir / f"step-{step:07d}.png", f"{spec.get('name', '')} step {step}",
                            preview_captions)
        if on_preview:
            on_preview(step, path)

    # 3. The loop.
    t_start = time.perf_counter()
    step = start
    with metrics_path.open("a") as metrics_file:
        while step < config.iterations:
            t0 = time.perf_counter()
            batch = {k: v.to(device) for k, v in sample_batch(config.batch_size, step_generator(config.seed, step, 0)).items()}
            task.generator.manual_seed(step_seed(config.seed, step, 1))
            metrics = run_iteration(task, split_batch(batch, config.grad_accum), device)
            if ema is not None:
                # Warm-up of the EMA decay so short runs are not dominated by the initial weights.
                _ema_update(ema, source, min(config.ema_decay, (1 + step) / (10 + step)))
            step += 1
            metrics["time/step_s"] = time.perf_counter() - t0
            for k, v in metrics.items():  # summed where they are: no host read per iteration
                v = v.detach().double() if isinstance(v, torch.Tensor) else v
                sums[k] = sums[k] + v if k in sums else v
                counts[k] = counts.get(k, 0) + 1

            # Log means over the interval (read back once), then previews and checkpoints.
            if step % config.log_every == 0 or step == config.iterations:
                row = {"step": step, **{k: v / counts[k] for k, v in as_floats(sums).items()}}
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                sums, counts = {}, {}
                if on_progress:
                    elapsed = time.perf_counter() - t_start
                    on_progress({"step": step, "iterations": config.iterations, "metrics": row,
                                 "elapsed_s": elapsed, "steps_per_s": (step - start) / max(elapsed, 1e-9)})
                bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
                if bad:
                    checkpoint(step)
                    raise FloatingPointError(f"training diverged at step {step}: non-finite {', '.join(bad)}")
            if step % config.preview_every == 0 or step == config.iterations:
                preview(step)
            if step % config.checkpoint_every == 0 and step < config.iterations:
                checkpoint(step)
            if should_stop is not None and step < config.iterations and should_stop():
                checkpoint(step)
                return TrainResult("stopped", step, None, time.perf_counter() - t_start)

    # 4. Ship the final network (EMA weights when averaging) and a last checkpoint for exact continuation.
    checkpoint(step)
    model_path = export_model(ema if ema is not None else source, out_dir / "model.safetensors",
                              {"spec": spec, "step": step})
    return TrainResult("completed", step, model_path, time.perf_counter() - t_start)
