"""Foreground jobs: what the CLI (and the UI's sampler process) run in-process, calling core.

The only place besides the Celery tasks (jobs issue) where core meets the rest. Everything arrives as plain
values; progress leaves through a callback taking (done, total).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from core.catalogue import get_teacher_info, parse_model_ref
from core.data import get_benchmark
from core.denoisers import CFGDenoiser, nfe_per_call
from core.images import grid_image, save_png, scatter_image, to_uint8
from core.noise import seeded_noise
from core.samplers import noise_draws, sample
from core.specs import BUILTIN_TEACHERS, SampleRequest
from core.teachers import load_teacher, train_builtin_teacher
from core.teachers.builtin import WEIGHTS_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_writable(folder: Path) -> Path:
    """Create `folder` if needed and prove it is writable, before any work is done."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"out: cannot write to {folder} ({exc.strerror or exc})") from None
    return folder


def train_teacher(name: str, out_dir: Path, *, iterations: int | None = None, seed: int | None = None,
                  install: bool = False, device: str = "cpu", command: str = "", progress=None) -> dict:
    """Train a built-in teacher; with `install`, ship its weights in core/teachers/weights."""
    info = BUILTIN_TEACHERS.get(name)
    if info is None or not info.trainable:
        trainable = ", ".join(n for n, i in BUILTIN_TEACHERS.items() if i.trainable)
        raise ValueError(f"teacher: {name!r} is not a trainable built-in teacher (trainable: {trainable})")
    changes = {k: v for k, v in {"iterations": iterations, "seed": seed}.items() if v is not None}
    config = info.train.replace(**changes)
    check_writable(out_dir)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = train_builtin_teacher(
        name, out_dir, config=config, device=device,
        on_progress=(lambda p: progress(p["step"], p["iterations"], p["metrics"])) if progress else None)
    record = {
        "command": command, "seed": config.seed, "iterations": config.iterations,
        "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
        "wall_minutes": round((time.perf_counter() - wall0) / 60, 2),
        "torch_threads": torch.get_num_threads(), "device": device, "machine": platform.machine(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "git": _git_revision(),
    }
    out = {"name": name, "status": result.status, "step": result.step, "out_dir": str(out_dir),
           "model": str(result.model_path) if result.model_path else None, "training": record}
    if install and result.model_path:
        doc = json.loads(result.model_path.with_suffix(".json").read_text())
        doc["meta"]["training"] = record
        WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.model_path, WEIGHTS_DIR / f"{name}.safetensors")
        (WEIGHTS_DIR / f"{name}.json").write_text(json.dumps(doc, indent=1))
        out["installed"] = str(WEIGHTS_DIR / f"{name}.safetensors")
    return out


def _labels(request: SampleRequest, cond: torch.Tensor | None) -> list[str]:
    if cond is None:
        return [f"seed {s}" for s in request.seeds]
    return [f"s{s} c{int(c)}" for s, c in zip(request.seeds, cond)]


def sample_model(request: SampleRequest, out_dir: Path, *, data_dir: Path | None = None, device: str = "cpu",
                 batch_size: int = 256, progress=None) -> dict:
    """Sample a model at fixed seeds and write PNGs + a labelled grid (images) or samples.npy + scatter (2-D)."""
    name = parse_model_ref(request.model)
    info = get_teacher_info(name, data_dir)
    if request.class_id is not None:
        if not info.num_classes:
            raise ValueError(f"class: teacher {name!r} is unconditional; leave --class out")
        if not 0 <= request.class_id < info.num_classes:
            raise ValueError(f"class: must be in [0, {info.num_classes - 1}] for {name!r}, got {request.class_id}")
    elif request.guidance != 1.0:
        raise ValueError("guidance: needs --class (guidance only applies to class-conditional sampling)")
    denoiser = load_teacher(name, data_dir, device)
    out_dir = check_writable(out_dir)
    if request.guidance != 1.0:
        denoiser = CFGDenoiser(denoiser, request.guidance)

    # Class ids: the requested class for every sample, else the null class (unconditional).
    n = len(request.seeds)
    cond = None
    if info.num_classes:
        cls = info.num_classes if request.class_id is None else request.class_id
        cond = torch.full((n,), cls, dtype=torch.long, device=device)
    draws = noise_draws(request.sampler, request.steps, request.eta)
    chunks = []
    t0 = time.perf_counter()
    for lo in range(0, n, batch_size):
        seeds = request.seeds[lo:lo + batch_size]
        noise = seeded_noise(seeds, info.data_shape, draws, device=device)
        chunks.append(sample(denoiser, noise, request.steps, None if cond is None else cond[lo:lo + batch_size],
                             request.sampler, request.eta).cpu())
        if progress:
            progress(min(lo + batch_size, n), n)
    x = torch.cat(chunks)
    elapsed = time.perf_counter() - t0
    nfe = request.steps * nfe_per_call(denoiser, conditional=request.class_id is not None)
    title = f"teacher:{name} · {request.sampler} {request.steps} steps · NFE {nfe}"
    if request.class_id is not None:
        title += f" · class {request.class_id}" + (f" · w={request.guidance:g}" if request.guidance != 1.0 else "")

    files: list[str] = []
    if info.is_image:
        images = to_uint8(x)
        for seed, img in zip(request.seeds, images):
            files.append(str(save_png(img, out_dir / f"seed-{seed:06d}.png")))
        grid_path = out_dir / "grid.png"
        grid_image(images, _labels(request, None if request.class_id is None else cond), title=title).save(grid_path)
    else:
        np.save(out_dir / "samples.npy", x.double().numpy())
        files.append(str(out_dir / "samples.npy"))
        bench = get_benchmark(info.benchmark) if info.benchmark != "imported" else None
        ref = None
        if bench is not None and bench.mixture is not None:
            ref = bench.mixture.sample(min(2048, max(n, 256)), torch.Generator().manual_seed(12345)).numpy()
        grid_path = out_dir / "scatter.png"
        scatter_image(x.double().numpy(), title=title, reference=ref).save(grid_path)
    summary = {"model": request.model, "n": n, "steps": request.steps, "nfe": nfe, "sampler": request.sampler,
               "class": request.class_id, "guidance": request.guidance, "seeds": list(request.seeds),
               "out_dir": str(out_dir), "grid": str(grid_path), "files": len(files),
               "seconds": round(elapsed, 3), "ms_per_sample": round(1000 * elapsed / n, 3)}
    (out_dir / "sample.json").write_text(json.dumps(summary, indent=1))
    return summary


def import_teacher(path: Path, name: str, data_dir: Path) -> dict:
    """Check a local diffusers folder and register it under DATA_DIR/teachers/NAME."""
    from core.teachers.imported import import_folder

    return import_folder(path, name, data_dir)
