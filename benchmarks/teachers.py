"""Teacher quality: digits class accuracy under an independent classifier, toy2d mode coverage.

Run: .venv/bin/python benchmarks/teachers.py [--per-class 100] [--toy-n 8192]
Writes benchmarks/results/teachers.json and teachers.md (with git revision and machine).
Quality bar: digits at 50 DDIM steps >= 90% classified as the requested class; every toy2d mode covered.
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
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.data import digits_tensors, get_benchmark  # noqa: E402
from core.images import to_uint8  # noqa: E402
from core.noise import seeded_noise  # noqa: E402
from core.samplers import sample  # noqa: E402
from core.specs import BUILTIN_TEACHERS  # noqa: E402
from core.teachers import load_teacher  # noqa: E402
from core.toy_metrics import energy_distance, mode_scores  # noqa: E402


def git_revision() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def digits_classifier(seed: int = 0):
    """An SVM trained on 70% of the real 16x16 digits; its held-out accuracy is reported alongside."""
    x, y = digits_tensors()
    feats = x.flatten(1).numpy()
    x_tr, x_te, y_tr, y_te = train_test_split(feats, y.numpy(), test_size=0.3, random_state=seed, stratify=y.numpy())
    clf = SVC(gamma="scale", C=10.0).fit(x_tr, y_tr)
    return clf, float((clf.predict(x_te) == y_te).mean())


def digits_accuracy(clf, per_class: int, steps: int, guidance: float = 1.0) -> dict:
    from core.denoisers import CFGDenoiser

    teacher = load_teacher("digits")
    if guidance != 1.0:
        teacher = CFGDenoiser(teacher, guidance)
    seeds = list(range(10 * per_class))
    cond = torch.tensor([s % 10 for s in seeds])
    t0 = time.perf_counter()
    chunks = []
    for lo in range(0, len(seeds), 500):
        noise = seeded_noise(seeds[lo:lo + 500], (1, 16, 16))
        chunks.append(sample(teacher, noise, steps, cond[lo:lo + 500]))
    seconds = time.perf_counter() - t0
    # Classify what a user sees: the 8-bit PNG values, mapped back to [-1, 1].
    images = torch.from_numpy(to_uint8(torch.cat(chunks))).float() / 127.5 - 1
    pred = clf.predict(images.flatten(1).numpy())
    hit = pred == cond.numpy()
    per = {str(c): float(hit[cond.numpy() == c].mean()) for c in range(10)}
    return {"steps": steps, "guidance": guidance, "n": len(seeds), "accuracy": float(hit.mean()),
            "per_class": per, "worst_class": min(per, key=per.get), "ms_per_sample": 1000 * seconds / len(seeds)}


def toy_coverage(name: str, n: int, steps: int) -> dict:
    info = BUILTIN_TEACHERS[name]
    mixture = get_benchmark(info.benchmark).mixture
    teacher = load_teacher(name)
    x = sample(teacher, seeded_noise(range(n), (2,)), steps).double()
    scores = mode_scores(x, mixture)
    ref = mixture.sample(n, torch.Generator().manual_seed(1))
    ref2 = mixture.sample(n, torch.Generator().manual_seed(2))
    return {"teacher": name, "steps": steps, "n": n, "modes": mixture.means.shape[0], "covered": scores["covered"],
            "min_mode_share": scores["min_mode_share"], "quality": scores["quality"],
            "energy_distance": energy_distance(x, ref), "energy_distance_floor": energy_distance(ref2, ref)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--toy-n", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.manual_seed(0)

    clf, clf_acc = digits_classifier()
    digits = [digits_accuracy(clf, args.per_class, steps) for steps in (50, 8)]
    toys = [toy_coverage(name, args.toy_n, steps) for name in ("toy2d-ring", "toy2d-grid") for steps in (50,)]
    result = {"git": git_revision(), "machine": platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "classifier_heldout_accuracy": clf_acc,
              "digits": digits, "toy2d": toys,
              "pass": {"digits_50_steps_ge_90": digits[0]["accuracy"] >= 0.90,
                       "toy2d_all_modes": all(t["covered"] == t["modes"] for t in toys)}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "teachers.json").write_text(json.dumps(result, indent=1))

    lines = [f"# Teacher quality (git {result['git']}, {result['machine']}, torch {result['torch']})", "",
             f"Independent digits classifier (SVM, 30% held-out real digits): {clf_acc:.1%}", "",
             "| teacher | steps | n | class accuracy | worst class | ms/sample |", "|---|---|---|---|---|---|"]
    for r in digits:
        lines.append(f"| digits | {r['steps']} | {r['n']} | {r['accuracy']:.1%} | {r['worst_class']} "
                     f"({r['per_class'][r['worst_class']]:.0%}) | {r['ms_per_sample']:.1f} |")
    lines += ["", "| teacher | steps | n | modes covered | min mode share | quality | energy dist. (floor) |",
              "|---|---|---|---|---|---|---|"]
    for r in toys:
        lines.append(f"| {r['teacher']} | {r['steps']} | {r['n']} | {r['covered']}/{r['modes']} | "
                     f"{r['min_mode_share']:.3f} | {r['quality']:.1%} | {r['energy_distance']:.4f} "
                     f"({r['energy_distance_floor']:.4f}) |")
    (args.out / "teachers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not all(result["pass"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
