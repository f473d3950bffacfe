"""Foreground sampling of a text-to-image teacher (imported SD/SDXL): prompts in, PNGs + captioned grids out.

Each prompt is drawn at every requested seed; a seed's initial latent comes from core.noise.seeded_noise alone, so it
is the same in any batch and for any prompt. The studio's DDIM runs in latent space and the VAE decodes at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from core.denoisers import CFGDenoiser, nfe_per_call
from core.images import grid_image, save_png, to_uint8
from core.noise import seeded_noise
from core.refs import ModelRef, parse_ref
from core.samplers import noise_draws, sample
from core.specs import SampleRequest
from core.teachers import load_text_to_image_teacher


def check_prompts(request: SampleRequest, name: str) -> None:
    if not request.prompts:
        raise ValueError(f"prompt: {name!r} is a text-to-image teacher; give --prompt TEXT or --prompts FILE")
    if request.class_id is not None:
        raise ValueError(f"class: {name!r} is prompt-conditioned, not class-conditional; leave --class out")


def _teacher(request: SampleRequest, data_dir, device):
    """(SD parts, run(noise, cond) -> latents, noise draws, NFE, title, checkpoint) of a teacher reference."""
    name = parse_ref(request.model).name
    check_prompts(request, name)
    teacher = load_text_to_image_teacher(name, data_dir, device)
    guided = CFGDenoiser(teacher.denoiser, request.guidance)  # w = 1 passes straight through to the teacher
    nfe = request.steps * nfe_per_call(guided, conditional=True)
    title = (f"{ModelRef.teacher(name).text} · {request.sampler} {request.steps} steps · w={request.guidance:g} · "
             f"NFE {nfe}")

    def run(noise, cond):
        return sample(guided, noise, request.steps, cond, request.sampler, request.eta)

    return teacher, run, noise_draws(request.sampler, request.steps, request.eta), nfe, title, None


def _student(request: SampleRequest, data_dir, device):
    """The same for a student folder of a text-to-image teacher: its method's own sampler, unguided, at
    request.steps, from the weights of its final model or of request.checkpoint."""
    from workers.local import load_weights, student_weights

    step, path, spec = student_weights(parse_ref(request.model).path, request.checkpoint)
    check_prompts(request, spec["teacher"])
    if request.guidance != 1.0:
        raise ValueError("guidance: students are sampled unguided (guidance belongs to the teacher)")
    teacher = load_text_to_image_teacher(spec["teacher"], data_dir, device)
    task = load_weights(path, spec, data_dir, device, teacher=teacher.denoiser)
    if not task.config.supports_steps(request.steps):
        raise ValueError(f"steps: {spec['method']} is a one-step generator; use --steps 1")
    title = (f"{spec['method']} student of {spec['teacher']} · step {step} · {request.steps} steps · "
             f"NFE {request.steps}")

    def run(noise, cond):
        return task.sample(noise, cond, request.steps)

    return teacher, run, task.noise_draws(request.steps), request.steps, title, step


def sample_text_to_image(request: SampleRequest, out_dir: Path, *, data_dir, device: str = "cpu",
                         batch_size: int = 16, progress=None) -> dict:
    """Sample every prompt at every seed with a text-to-image teacher or a student of one; write
    prompt-PPP-seed-SSSSSS.png, one grid per prompt (grid.png for a single prompt, grid-PPP.png otherwise) captioned
    with its prompt, and sample.json."""
    from workers.local import check_writable

    is_teacher = parse_ref(request.model).is_teacher
    teacher, run, draws, nfe, title, checkpoint = (_teacher if is_teacher else _student)(request, data_dir, device)
    out_dir = check_writable(out_dir)
    n, total, done = len(request.seeds), len(request.seeds) * len(request.prompts), 0
    files, grids = [], []
    t0 = time.perf_counter()
    for p, prompt in enumerate(request.prompts):
        cond = teacher.encoder.encode([prompt]).to(device)
        images = []
        for lo in range(0, n, batch_size):
            seeds = request.seeds[lo:lo + batch_size]
            noise = seeded_noise(seeds, teacher.latent_shape, draws, device=device)
            with torch.no_grad():
                images.append(to_uint8(teacher.decode(run(noise, cond.expand(len(seeds)))).cpu()))
            done += len(seeds)
            if progress:
                progress(done, total)
        grid, paths = _write_prompt(out_dir, p, prompt, images, request, f"{title} · \"{prompt}\"",
                                    single=len(request.prompts) == 1)
        files += paths
        grids.append(grid)
    elapsed = time.perf_counter() - t0
    summary = {"model": request.model, "n": n, "prompts": list(request.prompts), "images": total,
               "steps": request.steps, "nfe": nfe, "sampler": request.sampler if is_teacher else "student",
               "class": None, "guidance": request.guidance, "checkpoint": checkpoint, "seeds": list(request.seeds),
               "out_dir": str(out_dir), "grid": grids[0], "grids": grids, "files": len(files),
               "resolution": teacher.resolution, "seconds": round(elapsed, 3),
               "ms_per_sample": round(1000 * elapsed / total, 3)}
    (out_dir / "sample.json").write_text(json.dumps(summary, indent=1))
    return summary


def prompt_png(out_dir: Path, p: int, seed: int) -> Path:
    """Where prompt number `p` drawn at `seed` is written (the queued sample job records it from here)."""
    return out_dir / f"prompt-{p:03d}-seed-{seed:06d}.png"


def _write_prompt(out_dir: Path, p: int, prompt: str, images: list, request: SampleRequest, title: str,
                  single: bool) -> tuple[str, list[str]]:
    import numpy as np

    images = np.concatenate(images)
    paths = [str(save_png(img, prompt_png(out_dir, p, seed))) for seed, img in zip(request.seeds, images)]
    grid = out_dir / ("grid.png" if single else f"grid-{p:03d}.png")
    grid_image(images, [f"seed {s}" for s in request.seeds], title=title, scale=1).save(grid)
    return str(grid), paths
