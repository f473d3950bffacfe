"""Cost of one distillation iteration against one forward + backward of the network it trains.

The efficiency bar: an iteration should cost what its network passes cost, with no hidden copies, extra passes or
Python overhead. For each method on the digits teacher (batch 64, the digits preset) this times `train_step` over
whole TTUR cycles after a warm-up, and divides by the time of one forward + backward of a copy of the teacher UNet
on the same batch (the unit of the per-method pass counts in docs/methods.md#cost-per-iteration).

Run on a quiet machine:  .venv/bin/python benchmarks/speed.py [--iterations 20] [--methods dmd2,mmd]
Writes benchmarks/results/speed.json and speed.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.data import get_benchmark  # noqa: E402
from core.method_specs import build_method_config  # noqa: E402
from core.methods import build_method  # noqa: E402
from core.teachers import load_teacher  # noqa: E402
from core.teachers.trainer import denoising_loss  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# (label, method, preset, student steps); iterations are timed in multiples of 10, a whole number of TTUR cycles.
CASES = [("dmd2 (TTUR 5, GAN)", "dmd2", "digits", 1), ("dmd2 without GAN", "dmd2", "digits+no-gan", 1),
         ("dmd2 4-step", "dmd2", "digits+4-step", 4), ("mmd 8-step", "mmd", "digits", 8),
         ("mmd-instant 8-step", "mmd-instant", "digits", 8), ("emd (K = 4)", "emd", "digits", 1),
         ("diff-instruct", "diff-instruct", "digits", 1)]


def fwd_bwd_seconds(teacher, batch: dict, repeats: int) -> float:
    """Median time of one forward + backward (denoising loss) of a trainable copy of the teacher network."""
    net = copy.deepcopy(teacher).requires_grad_(True).train()
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats + 2):
        t = torch.rand(batch["x"].shape[0], generator=gen, dtype=torch.float64)
        noise = torch.randn(batch["x"].shape, generator=gen)
        t0 = time.perf_counter()
        denoising_loss(net, batch["x"], batch["cond"], t, noise).mean().backward()
        times.append(time.perf_counter() - t0)
        net.zero_grad(set_to_none=True)
    return sorted(times[2:])[len(times[2:]) // 2]


def iteration_seconds(teacher, method: str, preset: str, steps: int, iterations: int, batch_size: int) -> float:
    config = build_method_config(method, preset=preset, student_steps=steps)
    warm = getattr(config, "precond_batches", 10)  # time distillation, not mmd-instant's preconditioner
    torch.manual_seed(0)
    task = build_method(teacher, config, total_steps=warm + iterations, has_data=True)
    bench = get_benchmark("digits")
    batches = [bench.sample_batch(batch_size, torch.Generator().manual_seed(i)) for i in range(warm + iterations)]
    for b in batches[:warm]:
        task.train_step(b)
    t0 = time.perf_counter()
    for b in batches[warm:]:
        task.train_step(b)
    return (time.perf_counter() - t0) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--methods", type=lambda s: s.split(","), default=None)
    args = parser.parse_args()
    if args.iterations % 10:
        parser.error("--iterations must be a multiple of 10 (whole TTUR cycles)")
    teacher = load_teacher("digits")
    batch = get_benchmark("digits").sample_batch(args.batch_size, torch.Generator().manual_seed(0))
    unit = fwd_bwd_seconds(teacher, batch, repeats=10)
    rows = []
    for label, method, preset, steps in CASES:
        if args.methods and method not in args.methods:
            continue
        secs = iteration_seconds(teacher, method, preset, steps, args.iterations, args.batch_size)
        rows.append({"case": label, "method": method, "preset": preset, "steps": steps, "ms": 1000 * secs,
                     "ratio": secs / unit})
        print(rows[-1], flush=True)
    doc = {"machine": platform.machine(), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
           "iterations": args.iterations, "fwd_bwd_ms": 1000 * unit, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps(doc, indent=1))
    lines = [f"# Cost per distillation iteration (digits, batch {args.batch_size}, {doc['threads']} threads)", "",
             f"One forward + backward of the digits UNet: {doc['fwd_bwd_ms']:.0f} ms.", "",
             "| case | preset | ms per iteration | × forward + backward |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | `{r['preset']}` | {r['ms']:.0f} | {r['ratio']:.2f}× |" for r in rows]
    (RESULTS / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
