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




def sample_text_to_image(request: SampleRequest, out_dir: Path, *, data_dir, device: str = "cpu",
                         batch_size: int = 16, progress=None) -> dict:
    """Sample every prompt at every seed; write prompt-PPP-seed-SSSSSS.png, one grid per prompt (grid.png for a single
    prompt, grid-PPP.png otherwise) captioned with its prompt, and sample.json."""
    from workers.local import check_writable

    name = parse_ref(request.model).name
    check_prompts(request, name)
    out_dir = check_writable(out_dir)
    teacher = load_text_to_image_teacher(name, data_dir, device)
    guided = CFGDenoiser(teacher.denoiser, request.guidance)  # w = 1 passes straight through to the teacher
    nfe = request.steps * nfe_per_call(guided, conditional=True)
    draws = noise_draws(request.sampler, request.steps, request.eta)
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
                z = sample(guided, noise, request.steps, cond.expand(len(seeds)), request.sampler, request.eta)
                images.append(to_uint8(teacher.decode(z).cpu()))
            done += len(seeds)
            if progress:
                progress(done, total)
        grid, paths = _write_prompt(out_dir, name, p, prompt, images, request, nfe, single=len(request.prompts) == 1)
        files += paths
        grids.append(grid)
    elapsed = time.perf_counter() - t0
    summary = {"model": request.model, "n": n, "prompts": list(request.prompts), "images": total,
               "steps": request.steps, "nfe": nfe, "sampler": request.sampler, "class": None,
               "guidance": request.guidance, "checkpoint": None, "seeds": list(request.seeds), "out_dir": str(out_dir),
               "grid": grids[0], "grids": grids, "files": len(files), "resolution": teacher.resolution,
               "seconds": round(elapsed, 3), "ms_per_sample": round(1000 * elapsed / total, 3)}
    (out_dir / "sample.json").write_text(json.dumps(summary, indent=1))
    return summary


def _write_prompt(out_dir: Path, name: str, p: int, prompt: str, images: list, request: SampleRequest, nfe: int,
                  single: bool) -> tuple[str, list[str]]:
    import numpy as np

    images = np.concatenate(images)
    paths = [str(save_png(img, out_dir / f"prompt-{p:03d}-seed-{seed:06d}.png")) for seed, img in zip(request.seeds, images)]
    title = (f"{ModelRef.teacher(name).text} · \"{prompt}\" · {request.sampler} "
             f"{request.steps} steps · w={request.guidance:g} · NFE {nfe}")
    grid = out_dir / ("grid.png" if single else f"grid-{p:03d}.png")
    grid_image(images, [f"seed {s}" for s in request.seeds], title=title, scale=1).save(grid)
    return str(grid), paths
