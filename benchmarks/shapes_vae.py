"""Which latent size the `shapes` teacher's VAE needs: train stage 1 at a latent size, then read the reconstructions of
fixed evaluation scenes with the shipped attribute classifier. A teacher cannot draw more attributes right than its
VAE reconstructs, so the issue's bar (90 % of held-out prompts with every attribute right) needs a VAE well above it.

Run: .venv/bin/python benchmarks/shapes_vae.py --latent 16 [--iterations 1500] [--n 500]
Trains into benchmarks/results/runs/shapes-vae-LATENT (resumable) and writes benchmarks/results/shapes-vae-LATENT.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.checkpoints import load_state  # noqa: E402
from core.metrics.alignment import alignment  # noqa: E402
from core.metrics.shapes_classifier import load_classifier  # noqa: E402
from core.shapes import evaluation_scenes, render  # noqa: E402
from core.specs import TrainConfig  # noqa: E402
from core.teachers.shapes_parts import ShapesArchitecture, build_parts  # noqa: E402
from core.teachers.shapes_trainer import VAETrainer, image_batches  # noqa: E402
from core.train import run_training  # noqa: E402


def architecture(latent: int) -> ShapesArchitecture:
    """The default architecture with the VAE halving 32 px down to `latent` (8: twice, 16: once)."""
    levels = {8: 3, 16: 2}[latent]
    base = ShapesArchitecture()
    vae = dict(base.vae, block_out_channels=base.vae["block_out_channels"][:levels],
               down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels)
    return ShapesArchitecture(vae=vae, text=base.text, unet=dict(base.unet, sample_size=latent))


@torch.no_grad()
def reconstruction_alignment(vae, n: int) -> dict:
    model = load_classifier()
    out = {}
    for name in ("shapes-test", "shapes-heldout"):
        scenes = evaluation_scenes(name, n)
        pixels = np.stack([render(s) for s in scenes]).astype(np.float32)
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        result = alignment(model, rec, [s.caption for s in scenes]).to_dict()
        result["psnr_db"] = float(10 * torch.log10(4 / (rec - x).pow(2).mean()))
        out[name] = result
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, choices=(8, 16), default=16)
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--n", type=int, default=500, help="evaluation scenes per set")
    args = parser.parse_args()
    arch = architecture(args.latent)
    parts = build_parts(arch, Path(tempfile.mkdtemp()))
    config = TrainConfig(iterations=args.iterations, batch_size=64, lr=1e-3, warmup=100, ema_decay=0.999,
                         grad_clip=1.0, checkpoint_every=250, log_every=50, preview_every=500,
                         preview_seeds=tuple(range(8)))
    out_dir = ROOT / "benchmarks" / "results" / "runs" / f"shapes-vae-{args.latent}"
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = run_training(VAETrainer(parts["vae"], config), image_batches, config, out_dir=out_dir,
                          spec={"name": "shapes", "stage": "vae", "latent": args.latent},
                          on_progress=lambda p: print(p["step"], p["metrics"].get("stats/psnr"), flush=True))
    vae = parts["vae"]
    vae.load_state_dict(load_state(result.model_path)[0])
    vae.eval()
    report = {"latent": [4, args.latent, args.latent], "vae_parameters": sum(p.numel() for p in vae.parameters()),
              "train": config.to_dict(), "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
              "wall_minutes": round((time.perf_counter() - wall0) / 60, 2),
              "reconstructions": reconstruction_alignment(vae, args.n), "torch_threads": torch.get_num_threads(),
              "machine": platform.machine(),
              "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=ROOT).stdout.strip()}
    path = ROOT / "benchmarks" / "results" / f"shapes-vae-{args.latent}.json"
    path.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["reconstructions"], indent=1))


if __name__ == "__main__":
    main()
