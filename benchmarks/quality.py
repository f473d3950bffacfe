"""Student quality against the teacher: toy2d (mode coverage, energy distance, sliced W2) and digits (Fréchet
distance on an independent classifier's features, class accuracy, speed).

Run:  .venv/bin/python benchmarks/quality.py toy2d [--iterations 2000] [--methods mmd,dmd2,...]
      .venv/bin/python benchmarks/quality.py digits [--iterations 2000] [--n 2000]
Writes benchmarks/results/quality-<part>.json and .md (git revision, machine). Students are trained through the
same code path as `distill-studio distill` (workers.local.distill) into benchmarks/results/runs/.
The digits Fréchet distance uses a small sklearn MLP's hidden features until the evaluation issue's extractor lands.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.data import digits_tensors, get_benchmark  # noqa: E402
from core.images import to_uint8  # noqa: E402
from core.noise import seeded_noise  # noqa: E402
from core.samplers import sample  # noqa: E402
from core.teachers import load_teacher  # noqa: E402
from workers.local import distill, load_student  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
NATIVE = {"toy2d": [("mmd", 8), ("mmd", 2), ("mmd-instant", 8), ("emd", 1), ("diff-instruct", 1), ("dmd2", 1),
                    ("dmd2", 4)],
          "digits": [("mmd", 8), ("mmd", 4), ("emd", 1), ("diff-instruct", 1), ("dmd2", 1), ("dmd2", 4)]}


def git_revision() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


# -- distances -------------------------------------------------------------------------------------------------

def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def sliced_w2(a: torch.Tensor, b: torch.Tensor, projections: int = 64, seed: int = 0) -> float:
    dirs = torch.randn(projections, a.shape[1], generator=torch.Generator().manual_seed(seed), dtype=a.dtype)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    pa, pb = (a @ dirs.T).sort(0).values, (b @ dirs.T).sort(0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real))


def toy_scores(x: torch.Tensor, mixture) -> dict:
    x = x.double()
    d = torch.cdist(x, mixture.means.double())
    nearest = d.argmin(1)
    near = d.min(1).values <= 3 * mixture.stds.double()[nearest]
    share = torch.bincount(nearest[near], minlength=mixture.means.shape[0]).double() / len(x)
    ref = mixture.sample(len(x), torch.Generator().manual_seed(1))
    return {"covered": int((share >= 0.01).sum()), "quality": float(near.double().mean()),
            "energy": energy_distance(x, ref), "sliced_w2": sliced_w2(x, ref)}


# -- parts -----------------------------------------------------------------------------------------------------

def run_student(teacher: str, method: str, steps: int, iterations: int, preset: str, seed: int) -> tuple:
    out = RESULTS / "runs" / f"{teacher}-{method}-{steps}-{preset}-{iterations}"
    t0 = time.process_time()
    result = distill(teacher, method, out, preset=preset, student_steps=steps, iterations=iterations, seed=seed)
    task, _ = load_student(out)
    return task, result, (time.process_time() - t0) / 60


def part_toy2d(args) -> list[dict]:
    mixture = get_benchmark("toy2d-ring").mixture
    teacher = load_teacher("toy2d-ring")
    seeds = range(args.n)
    rows = []
    for steps in (1, 2, 4, 8, 50):
        x = sample(teacher, seeded_noise(seeds, (2,), steps), steps, sampler="ancestral")
        rows.append({"model": "teacher (ancestral)", "steps": steps, **toy_scores(x, mixture)})
    for method, steps in NATIVE["toy2d"]:
        if args.methods and method not in args.methods:
            continue
        task, result, cpu_min = run_student("toy2d-ring", method, steps, args.iterations, "toy2d", args.seed)
        x = task.sample(seeded_noise(seeds, (2,), task.noise_draws(steps)), None, steps)
        rows.append({"model": method, "steps": steps, "cpu_minutes": round(cpu_min, 2), **toy_scores(x, mixture)})
        print(rows[-1], flush=True)
    return rows


def digits_features():
    """An MLP classifier trained on the real digits; its hidden activations are the features."""
    from sklearn.neural_network import MLPClassifier

    x, y = digits_tensors()
    clf = MLPClassifier(hidden_layer_sizes=(128,), max_iter=400, random_state=0).fit(x.flatten(1).numpy(), y.numpy())

    def features(images: torch.Tensor) -> np.ndarray:
        flat = images.flatten(1).double().numpy()
        return np.maximum(flat @ clf.coefs_[0] + clf.intercepts_[0], 0.0)

    return clf, features


def part_digits(args) -> list[dict]:
    clf, features = digits_features()
    real, _ = digits_tensors()
    real_f = features(real)
    seeds = list(range(args.n))
    cond = torch.tensor([s % 10 for s in seeds])

    def score(make) -> dict:
        t0 = time.perf_counter()
        x = torch.cat([make(seeds[i:i + 500], cond[i:i + 500]) for i in range(0, len(seeds), 500)])
        secs = time.perf_counter() - t0
        x = torch.from_numpy(to_uint8(x)).float()[:, None] / 127.5 - 1  # what a user sees: 8-bit PNG values
        acc = float((clf.predict(x.flatten(1).numpy()) == cond.numpy()).mean())
        return {"fd": frechet(features(x), real_f), "accuracy": acc, "samples_per_s": len(seeds) / secs}

    teacher = load_teacher("digits")
    rows = []
    for steps in (1, 2, 4, 8, 50):
        rows.append({"model": "teacher (DDIM)", "steps": steps,
                     **score(lambda s, c, k=steps: sample(teacher, seeded_noise(s, (1, 16, 16)), k, c))})
        print(rows[-1], flush=True)
    for method, steps in NATIVE["digits"]:
        if args.methods and method not in args.methods:
            continue
        task, result, cpu_min = run_student("digits", method, steps, args.iterations, "digits", args.seed)
        row = {"model": method, "steps": steps, "cpu_minutes": round(cpu_min, 2),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
               **score(lambda s, c, k=steps, m=task: m.sample(seeded_noise(s, (1, 16, 16), m.noise_draws(k)), c, k))}
        rows.append(row)
        print(row, flush=True)
    return rows


def write(part: str, rows: list[dict], args) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"git": git_revision(), "machine": platform.machine(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "iterations": args.iterations, "n": args.n, "rows": rows}
    (RESULTS / f"quality-{part}.json").write_text(json.dumps(doc, indent=1))
    keys = [k for k in rows[0] if k not in ("model", "steps")]
    for r in rows:
        keys += [k for k in r if k not in keys and k not in ("model", "steps")]
    lines = [f"# Student quality: {part} (git {doc['git']}, {args.iterations} iterations, n = {args.n})", "",
             "| model | steps | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        lines.append(f"| {r['model']} | {r['steps']} | " + " | ".join(cells) + " |")
    (RESULTS / f"quality-{part}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["toy2d", "digits"])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--n", type=int, default=None, help="samples per row (toy2d 8192, digits 2000)")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.n = args.n or (8192 if args.part == "toy2d" else 2000)
    torch.manual_seed(0)
    rows = part_toy2d(args) if args.part == "toy2d" else part_digits(args)
    write(args.part, rows, args)


if __name__ == "__main__":
    main()
