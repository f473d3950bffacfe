"""The shipped `shapes` teacher's prompt alignment: how many prompts it draws with every attribute right.

Prompt i of a set ("shapes-test": every composition; "shapes-heldout": each scene shows a colour-shape pair never seen
in training) is drawn from the noise of seed i, with the studio's DDIM in latent space and classifier-free guidance,
decoded by the teacher's VAE and read by the shipped attribute classifier (core/metrics/alignment.py). `--diffusers`
also draws the held-out prompts with diffusers' own StableDiffusionPipeline (the folder's own scheduler), so the figure
holds for the folder as a user loads it.

Run: .venv/bin/python benchmarks/shapes_teacher.py [--n 1000] [--steps 50,8,4,2,1] [--guidance 4]
     .venv/bin/python benchmarks/shapes_teacher.py --sweep 1,2,3,4,6,8 --n 200 --steps 50   (choose the default w)
Writes benchmarks/results/shapes-teacher.json (or shapes-teacher-sweep.json) with git revision and machine.
Quality bar (the issue's): at 50 steps with its default guidance, >= 90 % of held-out prompts with every attribute right.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.catalogue import pipeline_folder  # noqa: E402
from core.denoisers import CFGDenoiser  # noqa: E402
from core.metrics.alignment import alignment  # noqa: E402
from core.metrics.shapes_classifier import load_classifier  # noqa: E402
from core.noise import seeded_noise  # noqa: E402
from core.samplers import sample  # noqa: E402
from core.shapes import EVAL_SETS, evaluation_scenes  # noqa: E402
from core.specs import BUILTIN_TEACHERS, SHAPES_GUIDANCE  # noqa: E402
from core.teachers import load_text_to_image_teacher  # noqa: E402

BATCH = 250


def git_revision() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


@torch.no_grad()
def studio_images(sd, captions: list[str], steps: int, guidance: float) -> tuple[torch.Tensor, float]:
    """Images in [-1, 1] of captions[i] from seed i; seconds spent sampling and decoding."""
    guided = CFGDenoiser(sd.denoiser, guidance)
    chunks, t0 = [], time.perf_counter()
    for lo in range(0, len(captions), BATCH):
        part = captions[lo:lo + BATCH]
        noise = seeded_noise(range(lo, lo + len(part)), sd.denoiser.data_shape)
        latents = sample(guided, noise, steps, sd.encoder.encode(part))
        chunks.append(sd.decode(latents).clamp(-1, 1))
    return torch.cat(chunks), time.perf_counter() - t0


@torch.no_grad()
def diffusers_images(captions: list[str], steps: int, guidance: float) -> tuple[torch.Tensor, str]:
    """Images in [-1, 1] drawn by diffusers' own pipeline from the shipped folder, and its scheduler's class."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(pipeline_folder(BUILTIN_TEACHERS["shapes"], None),
                                                   local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    chunks = []
    for lo in range(0, len(captions), BATCH):
        out = pipe(captions[lo:lo + BATCH], num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                   generator=torch.Generator().manual_seed(lo)).images
        chunks.append(torch.from_numpy(out).permute(0, 3, 1, 2) * 2 - 1)
    return torch.cat(chunks), type(pipe.scheduler).__name__


def row(classifier, images, captions, **fields) -> dict:
    result = alignment(classifier, images, captions)
    return {**fields, "n": len(captions), "all_right": result.all_right, "attribute_share": result.attribute_share,
            "per_attribute": result.per_attribute}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="prompts per set")
    parser.add_argument("--steps", type=lambda s: [int(v) for v in s.split(",")], default=[50, 8, 4, 2, 1])
    parser.add_argument("--guidance", type=float, default=SHAPES_GUIDANCE)
    parser.add_argument("--sweep", type=lambda s: [float(v) for v in s.split(",")], default=None,
                        help="guidance weights to compare (held-out prompts only)")
    parser.add_argument("--diffusers", action="store_true", help="also draw the held-out set with diffusers")
    args = parser.parse_args()

    sd, classifier = load_text_to_image_teacher("shapes"), load_classifier()
    sets = {name: [s.caption for s in evaluation_scenes(name, args.n)] for name in EVAL_SETS}
    rows = []
    for w in args.sweep or [args.guidance]:
        for steps in args.steps:
            for name in (["shapes-heldout"] if args.sweep else EVAL_SETS):
                images, seconds = studio_images(sd, sets[name], steps, w)
                rows.append(row(classifier, images, sets[name], set=name, sampler="studio ddim", steps=steps,
                                guidance=w, ms_per_image=1000 * seconds / args.n))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_attribute"}), flush=True)
    if args.diffusers:
        images, scheduler = diffusers_images(sets["shapes-heldout"], 50, args.guidance)
        rows.append(row(classifier, images, sets["shapes-heldout"], set="shapes-heldout",
                        sampler=f"diffusers StableDiffusionPipeline ({scheduler})", steps=50, guidance=args.guidance))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_attribute"}), flush=True)
    result = {"git": git_revision(), "machine": platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "rows": rows}
    name = "shapes-teacher-sweep.json" if args.sweep else "shapes-teacher.json"
    (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
