"""Foreground jobs: what the CLI (and the UI's sampler process) run in-process, calling core.

The only place besides the Celery tasks where core meets the rest. Everything arrives as plain
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

from core.catalogue import check_distillable, check_trainable, get_teacher_info, recipe_batch_size
from core.data import get_benchmark
from core.denoisers import CFGDenoiser, nfe_per_call
from core.images import grid_image, save_png, scatter_image, to_uint8
from core.noise import seeded_noise
from core.refs import ModelRef, parse_ref
from core.refs import default_steps as ref_default_steps
from core.run_files import check_init
from core.samplers import noise_draws, sample
from core.specs import SampleRequest
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
                  install: bool = False, device: str = "cpu", command: str = "", progress=None,
                  should_stop=None, on_checkpoint=None, vae_from: Path | None = None) -> dict:
    """Train a built-in teacher; with `install`, ship its weights in core/teachers/weights. `vae_from`: text-to-image
    teachers only, reuse that pipeline folder's autoencoder instead of training one."""
    info = check_trainable(name)
    if vae_from is not None and not info.is_text_to_image:
        raise ValueError(f"vae: {name} is not a text-to-image teacher; it has no autoencoder to reuse")
    changes = {k: v for k, v in {"iterations": iterations, "seed": seed}.items() if v is not None}
    config = info.train.replace(**changes)
    check_writable(out_dir)
    if info.is_text_to_image:
        from workers.pipeline_teacher import train_pipeline_teacher

        return train_pipeline_teacher(name, out_dir, changes, install=install, device=device, command=command,
                                       progress=progress, should_stop=should_stop, on_checkpoint=on_checkpoint,
                                       vae_from=vae_from)
    cpu0, wall0, git = time.process_time(), time.perf_counter(), _git_revision()  # the code that trains
    result = train_builtin_teacher(
        name, out_dir, config=config, device=device, should_stop=should_stop, on_checkpoint=on_checkpoint,
        on_progress=(lambda p: progress(p["step"], p["iterations"], p["metrics"])) if progress else None)
    record = {
        "command": command, "seed": config.seed, "iterations": config.iterations,
        "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
        "wall_minutes": round((time.perf_counter() - wall0) / 60, 2),
        "torch_threads": torch.get_num_threads(), "device": device, "machine": platform.machine(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "git": git,
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


def _teacher_sampler(request: SampleRequest, data_dir, device):
    """(info, run(noise_bank, cond), draws, NFE, title) for a teacher reference."""
    name = parse_ref(request.model).name
    info = get_teacher_info(name, data_dir)
    if request.prompts:
        raise ValueError(f"prompt: {name!r} is not a text-to-image teacher; leave --prompt/--prompts out")
    if request.class_id is None and request.guidance != 1.0:
        raise ValueError("guidance: needs --class (guidance only applies to class-conditional sampling)")
    _check_class(request, info.num_classes, name)
    denoiser = load_teacher(name, data_dir, device)
    if request.guidance != 1.0:
        denoiser = CFGDenoiser(denoiser, request.guidance)
    nfe = request.steps * nfe_per_call(denoiser, conditional=request.class_id is not None)
    title = f"{ModelRef.teacher(name).text} · {request.sampler} {request.steps} steps · NFE {nfe}"

    def run(noise, cond):
        return sample(denoiser, noise, request.steps, cond, request.sampler, request.eta)

    return info, run, noise_draws(request.sampler, request.steps, request.eta), nfe, title, None


def _student_sampler(request: SampleRequest, data_dir, device):
    """The same for a student folder: its method's own sampler, unguided, at request.steps; plus the training step
    of the weights sampled."""
    step, path, spec = student_weights(parse_ref(request.model).path, request.checkpoint)
    if request.prompts:
        raise ValueError("prompt: students are not prompt-conditioned; leave --prompt/--prompts out")
    task = load_weights(path, spec, data_dir, device)
    info = get_teacher_info(spec["teacher"], data_dir)
    if request.guidance != 1.0:
        raise ValueError("guidance: students are sampled unguided (guidance belongs to the teacher)")
    _check_class(request, info.num_classes, spec["teacher"])
    if not task.config.supports_steps(request.steps):
        raise ValueError(f"steps: {spec['method']} is a one-step generator; use --steps 1")
    title = f"{spec['method']} student of {spec['teacher']} · step {step} · {request.steps} steps · NFE {request.steps}"

    def run(noise, cond):
        return task.sample(noise, cond, request.steps)

    return info, run, task.noise_draws(request.steps), request.steps, title, step


def _check_class(request: SampleRequest, num_classes: int, name: str) -> None:
    if request.class_id is None:
        return
    if not num_classes:
        raise ValueError(f"class: {name!r} is unconditional; leave --class out")
    if not 0 <= request.class_id < num_classes:
        raise ValueError(f"class: must be in [0, {num_classes - 1}] for {name!r}, got {request.class_id}")


def sample_model(request: SampleRequest, out_dir: Path, *, data_dir: Path | None = None, device: str = "cpu",
                 batch_size: int = 256, progress=None) -> dict:
    """Sample a teacher or a student folder (request.checkpoint: one of its checkpoint steps) at fixed seeds; write
    PNGs + a labelled grid (images) or samples.npy + scatter (2-D). The summary's "checkpoint" is the training step
    of the student weights sampled (None for a teacher)."""
    ref = parse_ref(request.model)
    is_teacher = ref.is_teacher
    teacher = ref.name if is_teacher else student_weights(ref.path, request.checkpoint)[2]["teacher"]
    if get_teacher_info(teacher, data_dir).is_text_to_image:
        from workers.sample_text import sample_text_to_image
        return sample_text_to_image(request, out_dir, data_dir=data_dir, device=device, progress=progress)
    info, run, draws, nfe, title, checkpoint = (_teacher_sampler if is_teacher else _student_sampler)(request, data_dir, device)
    out_dir = check_writable(out_dir)

    # Class ids: the requested class for every sample, else the null class (unconditional).
    n = len(request.seeds)
    cond = None
    if info.num_classes:
        cls = info.num_classes if request.class_id is None else request.class_id
        cond = torch.full((n,), cls, dtype=torch.long, device=device)
    chunks = []
    t0 = time.perf_counter()
    for lo in range(0, n, batch_size):
        seeds = request.seeds[lo:lo + batch_size]
        noise = seeded_noise(seeds, info.data_shape, draws, device=device)
        with torch.no_grad():
            chunks.append(run(noise, None if cond is None else cond[lo:lo + batch_size]).cpu())
        if progress:
            progress(min(lo + batch_size, n), n)
    x = torch.cat(chunks)
    elapsed = time.perf_counter() - t0
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
    summary = {"model": request.model, "n": n, "steps": request.steps, "nfe": nfe,
               "sampler": request.sampler if is_teacher else "student", "class": request.class_id,
               "guidance": request.guidance, "checkpoint": checkpoint, "seeds": list(request.seeds), "out_dir": str(out_dir),
               "grid": str(grid_path), "files": len(files), "seconds": round(elapsed, 3),
               "ms_per_sample": round(1000 * elapsed / n, 3)}
    (out_dir / "sample.json").write_text(json.dumps(summary, indent=1))
    return summary


def import_teacher(path: Path, name: str, data_dir: Path, null_class: int | None = None) -> dict:
    """Check a local diffusers folder and register it under DATA_DIR/teachers/NAME (`null_class`: the label a
    class-conditional UNet2DModel treats as unconditional)."""
    from core.teachers.imported import import_folder

    return import_folder(path, name, data_dir, null_class)


def _distill_batches(info):
    """sample_batch for the loop: the teacher's benchmark data, or (imported teachers) batch size + null class."""
    if info.benchmark != "imported":
        return get_benchmark(info.benchmark).sample_batch, True

    def sizes_only(batch_size: int, generator: torch.Generator) -> dict:
        return {"size": torch.tensor(batch_size)}

    return sizes_only, False


def distill(teacher: str, method: str, out_dir: Path, *, preset: str = "default", student_steps: int | None = None,
            sets=(), iterations: int = 2000, batch_size: int | None = None, seed: int = 0,
            data_dir: Path | None = None, device: str = "cpu", progress=None, checkpoint_every: int | None = None,
            should_stop=None, on_checkpoint=None, prompts: Path | None = None, data: Path | None = None,
            init: Path | None = None, grad_accum: int = 1) -> dict:
    """Distil `teacher` with `method` through the one training loop (the CLI's foreground run and the worker's job).

    A text-to-image teacher trains on `prompts` (a prompt file) or `data` (an image folder with captions), checked by
    core.text_inputs before any work. `init`: a finished or stopped run folder of the same teacher and method whose
    latest training checkpoint gives the networks' starting weights (a second stage, e.g. DMD2's SD 1.5 GAN stage);
    optimizers start afresh, and a network the earlier run lacked (a GAN head) starts as usual."""
    from core.method_specs import build_method_config, check_teacher_data
    from core.methods import build_method
    from core.specs import TrainConfig
    from core.text_inputs import PREVIEW_PROMPTS, PREVIEW_SEEDS, check_text_inputs
    from core.train import run_training

    # 1. Validate everything before any work.
    info = check_distillable(teacher, data_dir)
    config = build_method_config(method, preset=preset, student_steps=student_steps, sets=sets)
    text = check_text_inputs(info, config.needs_data, method, prompts, data)
    if text is None:
        sample_batch, has_data = _distill_batches(info)
        check_teacher_data(config, teacher, has_data)
    else:
        has_data = text.has_data
    start = check_init(init, teacher, method) if init is not None else None  # before any work
    batch = batch_size or recipe_batch_size(info, text)
    previews = 512 if not info.is_image else 32 if text is None else PREVIEW_PROMPTS * PREVIEW_SEEDS
    train = TrainConfig(iterations=iterations, batch_size=batch, seed=seed, ema_decay=0.0, grad_accum=grad_accum,
                        checkpoint_every=checkpoint_every or max(1, min(500, iterations // 4)),
                        log_every=max(1, min(25, iterations // 20)),
                        preview_every=max(1, min(500, iterations // 4)),
                        preview_seeds=tuple(range(previews)))
    out_dir = check_writable(out_dir)

    # 2. Build the method from the teacher and run the loop.
    torch.manual_seed(seed)
    if text is None:
        task = build_method(load_teacher(teacher, data_dir, device), config, total_steps=iterations, device=device,
                            has_data=has_data)
    else:
        task, sample_batch = _text_to_image_task(teacher, text, config, iterations, data_dir, device, out_dir)
    spec = {"name": f"{method}-{teacher}", "kind": "student", "teacher": teacher, "method": method, "preset": preset,
            "config": config.to_dict(), "train": train.to_dict(), "seed": seed,
            "teacher_hash": task.teacher_hash, **({} if text is None else {"inputs": text.record()})}
    if start is not None:
        spec["init"] = _apply_init(task, *start)
    # Written first, so the snapshots of a run still running can be sampled (student_weights).
    (out_dir / "student.json").write_text(json.dumps(spec, indent=1))
    cpu0 = time.process_time()
    result = run_training(task, sample_batch, train, out_dir=out_dir, spec=spec, device=device,
                          should_stop=should_stop, on_checkpoint=on_checkpoint,
                          preview_captions=None if text is None else text.preview_prompts(),
                          on_progress=(lambda p: progress(p["step"], p["iterations"], p["metrics"])) if progress else None)
    return {"status": result.status, "step": result.step, "out_dir": str(out_dir),
            "model": str(result.model_path) if result.model_path else None, "method": method, "teacher": teacher,
            "student_steps": config.student_steps, "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
            "wall_minutes": round(result.elapsed_s / 60, 2)}


def _apply_init(task, path: Path, step: int) -> dict:
    """Load the networks of a checkpoint `task` also has (same names and shapes); the record stored in the spec."""
    from core.checkpoints import load_state
    from core.lora import load_shipped_state

    state, _ = load_state(path, device=task.device)
    if state["task"]["teacher_hash"] != task.teacher_hash:
        raise ValueError(f"init: {path} was made with a different teacher (parameter hash mismatch)")
    saved = state["task"]["nets"]
    loaded = [name for name in task.nets if name in saved]
    for name in loaded:
        load_shipped_state(task.nets[name], saved[name])
    return {"from": str(path.parent.parent), "step": step, "nets": loaded}


def _text_to_image_task(teacher: str, text, config, iterations: int, data_dir, device: str, out_dir: Path):
    """(method, sample_batch) for a text-to-image teacher: prompts encoded per batch, real images encoded through the
    VAE once into the latent cache (DATA_DIR/cache/latents, or the run folder without a data dir), previews of fixed
    prompts decoded through the VAE."""
    from core.methods import build_method
    from core.teachers import load_text_to_image_teacher
    from core.text_data import LatentBatches, PromptBatches, SceneBatches, latent_cache

    sd = load_text_to_image_teacher(teacher, data_dir, device)
    task = build_method(sd.denoiser, config, total_steps=iterations, device=device, has_data=text.has_data)
    task.use_prompts(sd.encoder.encode(text.preview_prompts()), sd.decode)
    if text.benchmark is not None:
        return task, SceneBatches(sd.vae, sd.scaling_factor, sd.encoder.encode, images=config.needs_data)
    if text.data is None:
        return task, PromptBatches(text.train_prompts, sd.encoder.encode)
    cache_dir = Path(data_dir) / "cache" / "latents" if data_dir is not None else out_dir / "latents"
    cache = latent_cache(text.data, sd.vae, sd.resolution, sd.scaling_factor, cache_dir)
    return task, LatentBatches(cache, text.train_prompts, sd.encoder.encode)


def student_weights(folder: Path, step: int | None = None) -> tuple[int, Path, dict]:
    """(training step, safetensors file, spec) of a student folder's weights, without loading them.

    step=None: the final model (model.safetensors). A step: that checkpoint's snapshot (snapshots/step-N), which
    exists while the run is still running too; a finished run's final step may also be its model.safetensors (runs
    distilled before snapshots were kept). The spec is student.json, else the one stored with the weights."""
    from core.checkpoints import list_checkpoints
    from core.train import list_snapshots, snapshot_path

    folder = Path(folder)
    model = folder / "model.safetensors"
    final_step = _meta(model).get("step") if model.is_file() and model.with_suffix(".json").is_file() else None
    if step is None:
        if final_step is None:
            raise FileNotFoundError(f"model: {str(folder)!r} is neither teacher:NAME nor a finished student folder "
                                    "(model.safetensors and student.json)")
        path, step = model, int(final_step)
    else:
        path = snapshot_path(folder, step)
        if not (path.is_file() and path.with_suffix(".json").is_file()):
            if final_step is not None and int(final_step) == step:
                path = model
            else:
                saved = sorted({s for s, _ in list_snapshots(folder)} | ({int(final_step)} if final_step is not None else set()))
                if not saved and not list_checkpoints(folder / "checkpoints") and not (folder / "student.json").is_file():
                    raise FileNotFoundError(f"model: {str(folder)!r} is neither teacher:NAME nor a student folder")
                raise ValueError(f"checkpoint: run has no snapshot at step {step}; saved: "
                                 f"{', '.join(map(str, saved)) or 'none yet'}")
    spec_path = folder / "student.json"
    spec = json.loads(spec_path.read_text()) if spec_path.is_file() else _meta(path).get("spec")
    if not spec or "method" not in spec or spec.get("kind", "student") != "student":
        raise FileNotFoundError(f"model: {str(folder)!r} is not a student folder (no student spec)")
    return step, path, spec


def default_steps(model: str, checkpoint: int | None = None) -> int:
    """The step count to sample a teacher or student folder reference at (core.refs.default_steps), a student's read
    from the spec of the weights sampled, so a running run's snapshot works too."""
    ref = parse_ref(model)
    if ref.is_teacher or ref.steps is not None:
        return ref_default_steps(ref)
    return ref_default_steps(ref, student_weights(ref.path, checkpoint)[2])


def _meta(path: Path) -> dict:
    """The meta of a safetensors file's JSON sidecar (save_state), without loading the tensors."""
    return json.loads(path.with_suffix(".json").read_text()).get("meta", {})


def load_student(folder: Path, data_dir: Path | None = None, device: str = "cpu", step: int | None = None):
    """(method object holding the trained student, spec) from a distill output folder: its final model, or with
    `step` the snapshot of that checkpoint (a running run's too). ValueError naming `checkpoint` for a missing step."""
    _, path, spec = student_weights(folder, step)
    return load_weights(path, spec, data_dir, device), spec


def load_weights(path: Path, spec: dict, data_dir: Path | None, device: str, teacher=None):
    """The method object of a student `spec` holding the weights in `path`; `teacher`: its teacher's denoiser when the
    caller has loaded it already (a text-to-image teacher's parts are loaded once)."""
    from core.checkpoints import load_state
    from core.lora import load_shipped_state
    from core.method_specs import METHOD_CONFIGS
    from core.methods import build_method

    config = METHOD_CONFIGS[spec["method"]].from_dict(spec["config"])
    # has_data=True: loading trains nothing, so the training-data check has nothing to refuse
    task = build_method(teacher if teacher is not None else load_teacher(spec["teacher"], data_dir, device), config,
                        total_steps=spec["train"]["iterations"], device=device, has_data=True)
    if task.teacher_hash != spec["teacher_hash"]:
        raise ValueError(f"model: teacher {spec['teacher']!r} has changed since this student was distilled")
    state, _ = load_state(path, device=device)
    load_shipped_state(task.student, state)
    task.student.eval()
    return task
