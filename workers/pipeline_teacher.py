"""Training and shipping a built-in text-to-image teacher (shapes): both stages, the training record, and the
install that checks the trained pipeline as `teachers import` does and ships it in core/teachers/weights/NAME."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from core.teachers.builtin import WEIGHTS_DIR
from workers.local import _git_revision


def train_pipeline_teacher(name: str, out_dir: Path, changes: dict, *, install: bool, device: str, command: str,
                           progress, should_stop, on_checkpoint, vae_from: Path | None = None) -> dict:
    """The shapes teacher: two stages (VAE, then text encoder + UNet; `iterations` and `seed` apply to both), a
    StableDiffusionPipeline folder, and with `install` that folder checked as an import is and shipped in
    core/teachers/weights/NAME with its teacher.json (the import's manifest plus the training record).

    `vae_from` (a pipeline folder) reuses its autoencoder instead of stage 1; the record then carries that folder's
    own VAE record (teacher.json) where it has one, so the shipped teacher still says how all of it was trained."""
    from core.specs import BUILTIN_TEACHERS, SHAPES_VAE_TRAIN
    from core.teachers.shapes_parts import ShapesArchitecture
    from core.teachers.shapes_trainer import train_shapes

    vae_config = SHAPES_VAE_TRAIN.replace(**changes)
    unet_config = BUILTIN_TEACHERS[name].train.replace(**changes)
    wall0, git = time.perf_counter(), _git_revision()  # the code that trains, not the revision when it ends
    vae_record = reused_vae_record(vae_from) if vae_from is not None else None  # read before --install replaces it
    vae_steps = 0 if vae_from is not None else vae_config.iterations

    def report(p):  # one bar over both stages: stage 2's step n is step vae_iterations + n
        if progress:
            done = p["step"] + (vae_steps if p["stage"] == "unet" else 0)
            progress(done, vae_steps + unet_config.iterations, p["metrics"])

    result = train_shapes(out_dir, arch=ShapesArchitecture(), vae_config=vae_config, unet_config=unet_config,
                          seed=unet_config.seed, device=device, on_progress=report, should_stop=should_stop,
                          on_checkpoint=on_checkpoint, vae_from=vae_from)
    vae_part = ({"vae_iterations": vae_config.iterations, "vae_train": vae_config.to_dict()} if vae_record is None
                else {"vae_from": vae_record})
    record = {
        "command": command, "seed": unet_config.seed, "iterations": unet_config.iterations, **vae_part,
        "train": unet_config.to_dict(),
        "cpu_minutes": result.cpu_minutes, "wall_minutes": round((time.perf_counter() - wall0) / 60, 2),
        "torch_threads": torch.get_num_threads(), "device": device, "machine": platform.machine(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "git": git,
    }
    out = {"name": name, "status": result.status, "stage": result.stage, "step": result.step, "out_dir": str(out_dir),
           "model": str(result.pipeline) if result.pipeline else None, "training": record}
    if install and result.pipeline:
        out["installed"] = str(install_pipeline_teacher(name, result.pipeline, record))
    return out


def reused_vae_record(folder: Path) -> dict:
    """What the record keeps of a reused autoencoder: its folder and, from its teacher.json where there is one, how
    that VAE was trained (steps, config, the CPU minutes of the whole training it came from, revision)."""
    from core.catalogue import MANIFEST

    out: dict = {"folder": str(folder)}
    manifest = Path(folder) / MANIFEST
    if manifest.is_file():
        training = json.loads(manifest.read_text()).get("training", {})
        if "vae_from" in training:  # reused in turn: keep the original VAE's record, not a chain
            return {**training["vae_from"], "folder": str(folder)}
        keep = ("command", "vae_iterations", "vae_train", "cpu_minutes", "git")
        out |= {k: training[k] for k in keep if k in training}
    return out


def install_pipeline_teacher(name: str, pipeline: Path, record: dict) -> Path:
    """Check `pipeline` as `teachers import` would and ship it as core/teachers/weights/NAME (all or nothing)."""
    from core.catalogue import MANIFEST
    from core.specs import BUILTIN_TEACHERS
    from core.teachers.imported import inspect_folder
    from core.teachers.imported_sd import copy_sd_parts

    fields = inspect_folder(pipeline)
    info = BUILTIN_TEACHERS[name]
    expected = (info.kind, list(info.data_shape), info.resolution, info.prediction_type)
    got = (fields["kind"], fields["data_shape"], fields["resolution"], fields["prediction_type"])
    if got != expected:
        raise ValueError(f"{name}: the trained pipeline is {got}, the catalogue says {expected}")
    manifest = {"name": name, "source": "built-in", "description": info.description, **fields, "training": record}
    dest = WEIGHTS_DIR / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=WEIGHTS_DIR))
    try:
        copy_sd_parts(pipeline, tmp, fields["kind"])
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
