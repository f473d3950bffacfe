"""The prepared GPU check (under 10 minutes on one GPU): bf16 against fp32 and LoRA against full DMD2 students on a
tiny random SD pipeline and on the `shapes` teacher, through the CLI's own distill path, with each run's peak device
memory (torch.cuda.max_memory_allocated) and seconds per iteration; then benchmarks/speed.py's pass-sum table on the
device for dmd2 and mmd.

    .venv/bin/python benchmarks/gpu_check.py [--device cuda] [--iterations 40] [--out benchmarks/results/gpu]

Writes gpu.json, gpu.md and speed.md into OUT. With --device cpu it runs the same cases as a smoke test
(memory is then not reported). Not measured yet: several ranks (multi-GPU runs are not built yet).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.teachers.imported import import_folder  # noqa: E402
from tests.tiny_pipelines import save_tiny_sd, write_prompts  # noqa: E402
from workers.local import distill  # noqa: E402

# (teacher, label, knob overrides); the shapes teacher trains on its own scenes at batch 64 (its preset), the tiny SD
# pipeline on three prompts at batch 8.
CASES = [("sd-tiny", "fp32 full", ()), ("sd-tiny", "bf16 full", ("precision=bf16",)),
         ("sd-tiny", "bf16 lora", ("precision=bf16", "student=lora")),
         ("shapes", "fp32 full", ()), ("shapes", "bf16 full", ("precision=bf16",)),
         ("shapes", "bf16 lora", ("precision=bf16", "student=lora")),
         ("shapes", "bf16 full, checkpointed", ("precision=bf16", "gradient_checkpointing=true"))]


def run_case(teacher: str, sets: tuple[str, ...], iterations: int, device: str, data_dir: Path, prompts: Path,
             out: Path) -> dict:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    extra = {"prompts": prompts} if teacher == "sd-tiny" else {}
    preset = "shapes" if teacher == "shapes" else "sd15"
    t0 = time.perf_counter()
    result = distill(teacher, "dmd2", out, preset=preset, iterations=iterations, data_dir=data_dir, device=device,
                     sets=sets, checkpoint_every=iterations, **extra)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None
    return {"status": result["status"], "s_per_iteration": seconds / iterations, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = tmp / "data"
        import_folder(save_tiny_sd(tmp / "sd"), "sd-tiny", data_dir)
        prompts = write_prompts(tmp / "prompts.txt")
        for i, (teacher, label, sets) in enumerate(CASES):
            row = {"teacher": teacher, "case": label, "sets": list(sets),
                   **run_case(teacher, sets, args.iterations, args.device, data_dir, prompts, tmp / f"run-{i}")}
            rows.append(row)
            print(row, flush=True)
    doc = {"device": args.device, "name": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
           else "cpu", "iterations": args.iterations, "rows": rows}
    (args.out / "gpu.json").write_text(json.dumps(doc, indent=1))
    lines = [f"# DMD2 on {doc['name']} ({args.iterations} iterations per case)", "",
             "| teacher | case | s / iteration | peak MB |", "|---|---|---|---|"]
    for r in rows:
        peak = "–" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(f"| {r['teacher']} | {r['case']} | {r['s_per_iteration']:.3f} | {peak} |")
    (args.out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--device", args.device, "--methods",
                    "dmd2,mmd", "--iterations", "20", "--out", str(args.out)], check=True)


if __name__ == "__main__":
    main()
