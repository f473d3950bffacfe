"""Cost of one distillation iteration against the sum of its own network passes, in fp32, bf16 and with LoRA students.

The efficiency bar: an iteration should cost what its network passes cost, with no hidden copies, extra passes or
Python overhead. For each method on the digits teacher (batch 64, the digits preset) this runs whole TTUR cycles
through the loop's own stepping (core.stepping.run_iteration) after a warm-up and, in the same iterations, times
every pass: each network's forwards (teacher, student, auxiliary / fake score, GAN head; a forward cut short at the
bottleneck is DMD2's encoder-only pass), every backward (`backward` and `autograd.grad`, including EMD's input VJPs and
mmd-instant's teacher gradients) and every optimizer step. It reports the iteration's wall time against that pass-sum
(goal: within 5%; the rest is Python glue, noise draws and metric bookkeeping), and, per method, bf16 against fp32
and a rank-16 LoRA student (and auxiliary) against full fine-tuning: iteration time and the bytes of parameters,
gradients and Adam states. Also one forward + backward of the teacher UNet (denoising loss), the unit of
docs/methods.md#cost-per-iteration.

Run on a quiet machine:  .venv/bin/python benchmarks/speed.py [--iterations 20] [--methods dmd2,mmd]
Writes benchmarks/results/speed.json and speed.md. A GPU run: add --device cuda (timers then synchronise).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import core.stepping as stepping  # noqa: E402
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
VARIANTS = {"fp32": [], "bf16": ["precision=bf16"], "lora": ["student=lora"]}
NETWORKS = ("teacher", "student", "aux", "fake", "head")


class PassTimer:
    """Wall time per pass kind, collected while `active`: forwards of the named networks (patched `forward`, so a
    forward cut short by an exception still counts, as `<net> encoder`), backwards and optimizer steps."""

    def __init__(self, device: torch.device):
        self.device, self.active, self.totals = device, False, defaultdict(float)
        self.depth = 0  # only the outermost timed call counts (a backward inside a forward is the forward's)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def timing(self, kind: str):
        if not self.active or self.depth:
            yield
            return
        self.depth += 1
        self.sync()
        t0, name = time.perf_counter(), kind
        try:
            yield
        except BaseException:
            name = f"{kind} encoder" if kind.endswith("forward") else kind
            raise
        finally:
            self.sync()
            self.totals[name] += time.perf_counter() - t0
            self.depth -= 1

    def wrap_forward(self, module: torch.nn.Module, name: str) -> None:
        original = module.forward

        def forward(*args, **kwargs):
            with self.timing(f"{name} forward"):
                return original(*args, **kwargs)

        module.forward = forward

    def wrap_function(self, owner, attr: str, kind: str):
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            with self.timing(kind):
                return original(*args, **kwargs)

        setattr(owner, attr, timed)
        return original


def state_bytes(task) -> int:
    """Bytes of distinct parameters (teacher included), gradients of trainable ones and optimizer states."""
    params = {id(p): p for net in [task.teacher, *task.nets.values()] for p in net.parameters()}
    total = sum(p.numel() * p.element_size() for p in params.values())
    for opt, _ in task.optims.values():
        for group in opt.param_groups:
            for p in group["params"]:
                total += p.numel() * p.element_size()  # its gradient
                total += sum(v.numel() * v.element_size() for v in opt.state.get(p, {}).values()
                             if isinstance(v, torch.Tensor))
    return total


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


def measure(teacher, method: str, preset: str, steps: int, sets: list[str], iterations: int, batch_size: int,
            device: torch.device) -> dict:
    """One method and variant: seconds per iteration, the pass-sum and its parts, state bytes."""
    config = build_method_config(method, preset=preset, student_steps=steps, sets=sets)
    warm = getattr(config, "precond_batches", 10)  # time distillation, not mmd-instant's preconditioner
    torch.manual_seed(0)
    task = build_method(teacher, config, total_steps=warm + iterations, has_data=True, device=device)
    bench = get_benchmark("digits")
    batches = [{k: v.to(device) for k, v in bench.sample_batch(batch_size, torch.Generator().manual_seed(i)).items()}
               for i in range(warm + iterations)]
    timer = PassTimer(device)
    wrapped = [getattr(task, name) for name in NETWORKS if getattr(task, name, None) is not None]
    for name in NETWORKS:
        if getattr(task, name, None) is not None:
            timer.wrap_forward(getattr(task, name), name)
    restore = [(torch.autograd, "backward", timer.wrap_function(torch.autograd, "backward", "backward")),
               (torch.autograd, "grad", timer.wrap_function(torch.autograd, "grad", "backward")),
               (stepping, "_step", timer.wrap_function(stepping, "_step", "optimizer step"))]
    try:
        for b in batches[:warm]:
            stepping.run_iteration(task, [b], device)
        timer.active = True
        timer.sync()
        t0 = time.perf_counter()
        for b in batches[warm:]:
            stepping.run_iteration(task, [b], device)
        timer.sync()
        seconds = (time.perf_counter() - t0) / iterations
    finally:
        for owner, attr, original in restore:
            setattr(owner, attr, original)
        for module in wrapped:  # the teacher is shared with the next case: and a deepcopy would copy the wrapper
            del module.forward
    passes = {k: v / iterations for k, v in sorted(timer.totals.items())}
    pass_sum = sum(passes.values())
    return {"ms": 1000 * seconds, "pass_sum_ms": 1000 * pass_sum, "overhead": seconds / pass_sum - 1,
            "passes_ms": {k: 1000 * v for k, v in passes.items()}, "state_mb": state_bytes(task) / 2**20}


def report(doc: dict) -> str:
    lines = [f"# Cost per distillation iteration (digits, batch {doc['batch_size']}, {doc['threads']} threads, "
             f"{doc['device']})", "",
             f"One forward + backward of the digits UNet: {doc['fwd_bwd_ms']:.0f} ms. Pass-sum: every forward, backward "
             "and optimizer step of the same iterations, timed as they ran; overhead = iteration / pass-sum - 1.", "",
             "| case | fp32 ms | pass-sum ms | overhead | × fwd+bwd | bf16 / fp32 | LoRA / full time | "
             "LoRA / full state MB |", "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        v = r["variants"]
        fp32, bf16, lora = v["fp32"], v.get("bf16"), v.get("lora")
        cells = [r["case"], f"{fp32['ms']:.0f}", f"{fp32['pass_sum_ms']:.0f}", f"{100 * fp32['overhead']:+.1f}%",
                 f"{fp32['ms'] / doc['fwd_bwd_ms']:.2f}×", f"{bf16['ms'] / fp32['ms']:.2f}" if bf16 else "–",
                 f"{lora['ms'] / fp32['ms']:.2f}" if lora else "–",
                 f"{lora['state_mb']:.1f} / {fp32['state_mb']:.1f}" if lora else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Passes per iteration (fp32, ms):", ""]
    for r in doc["rows"]:
        parts = ", ".join(f"{k} {v:.0f}" for k, v in r["variants"]["fp32"]["passes_ms"].items())
        lines.append(f"- {r['case']}: {parts}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--methods", type=lambda s: s.split(","), default=None)
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for speed.json and speed.md")
    args = parser.parse_args()
    if args.iterations % 10:
        parser.error("--iterations must be a multiple of 10 (whole TTUR cycles)")
    if "fp32" not in args.variants:
        parser.error("--variants must include fp32 (the reference of the ratios)")
    device = torch.device(args.device)
    teacher = load_teacher("digits", device=str(device))
    batch = {k: v.to(device) for k, v in
             get_benchmark("digits").sample_batch(args.batch_size, torch.Generator().manual_seed(0)).items()}
    unit = fwd_bwd_seconds(teacher, batch, repeats=10)
    rows = []
    for label, method, preset, steps in CASES:
        if args.methods and method not in args.methods:
            continue
        row = {"case": label, "method": method, "preset": preset, "steps": steps, "variants": {}}
        for variant in args.variants:
            row["variants"][variant] = measure(teacher, method, preset, steps, VARIANTS[variant], args.iterations,
                                               args.batch_size, device)
            print(label, variant, {k: v for k, v in row["variants"][variant].items() if k != "passes_ms"}, flush=True)
        rows.append(row)
    doc = {"machine": platform.machine(), "threads": torch.get_num_threads(), "device": str(device),
           "batch_size": args.batch_size, "iterations": args.iterations, "fwd_bwd_ms": 1000 * unit, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(doc, indent=1))
    text = report(doc)
    (args.out / "speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
