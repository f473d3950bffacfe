"""The files of a run folder, torch-free, so a job spec that points at an earlier run is checked before it is queued:
training checkpoints (checkpoints/step-NNNNNNN.safetensors + .json, written by core.checkpoints.save_state) and the
student spec (student.json, written first by a distillation)."""

from __future__ import annotations

import json
import re
from pathlib import Path

_CKPT = re.compile(r"^step-(\d{7,})\.safetensors$")


def checkpoint_path(ckpt_dir: Path | str, step: int) -> Path:
    return Path(ckpt_dir) / f"step-{step:07d}.safetensors"


def list_checkpoints(ckpt_dir: Path | str) -> list[tuple[int, Path]]:
    """(step, file) of every complete checkpoint (its .json sidecar written), oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _CKPT.match(p.name))
             and p.with_suffix(".json").is_file()]
    return sorted(found)


def check_init(folder: Path | str, teacher: str, method: str) -> tuple[Path, int]:
    """(checkpoint file, step) a distillation starts from with `init`: the latest training checkpoint of `folder`, a
    run of the same teacher and method; ValueError naming `init` otherwise."""
    folder = Path(folder)
    spec_path = folder / "student.json"
    if not spec_path.is_file():
        raise ValueError(f"init: {folder} is not a distill run folder (no student.json)")
    spec = json.loads(spec_path.read_text())
    if (spec.get("teacher"), spec.get("method")) != (teacher, method):
        raise ValueError(f"init: {folder} distilled {spec.get('teacher')!r} with {spec.get('method')!r}; a run starts "
                         f"only from one of the same teacher and method ({teacher!r}, {method!r})")
    found = list_checkpoints(folder / "checkpoints")
    if not found:
        raise ValueError(f"init: {folder} has no training checkpoint to start from")
    step, path = found[-1]
    return path, step
