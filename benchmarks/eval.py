"""Time to evaluate 10,000 digits samples: our evaluation path against calling clean-fid directly, and the cache speed-up.

The samples: the digits teacher at --steps DDIM steps (default 1), seeds 0 .. n-1 with per-seed noise (core.noise),
seed s drawn as class s % 10 -- what `distill-studio evaluate` draws -- generated once and also written as 8-bit PNGs
into a temporary folder, next to a folder holding the 1,797 real digits as PNGs (clean-fid's direct path needs folders).
FID is measured against all 1,797 real digits with the shipped `digits` extractor, on the CPU, in one process, with
the same torch thread count for every path. Timed (best of --repeats, the paths interleaved round by round so that a
load spike on a shared machine hits them alike):

  ours, in memory, cold  what workers/evaluate.py does for FID: reference_stats() (workers/reference.py) computes the
                         reference features, writes DATA_DIR/reference/<key>.npz and records it in the database (a
                         fresh data dir and SQLite database per round), then images_to_features() on the sample tensor
                         and fid_from_stats() against the reference statistics;
  ours, in memory, warm  the same with the reference statistics already cached (read back from the file the database
                         row names): every evaluation after the first;
  ours, folder           core.metrics.folder_fid(dir_gen, dir_real, "digits") (`distill-studio fid`);
  clean-fid direct       cleanfid.fid.compute_fid(dir_gen, dir_real, mode="clean", custom_feat_extractor=
                         get_extractor("digits"), custom_fn_resize=resize_for("digits"), num_workers=0, device=cpu,
                         batch_size=256, verbose=False) -- the batch size our paths use; once more at clean-fid's own
                         default batch_size=32 for information (first round only; --no-default-batch skips it).

The extractor module is built before the clock starts for the in-memory paths and for clean-fid (evaluate loads it once
up front; clean-fid is handed a built one); folder_fid builds its own inside the timing. Writing the PNGs is not timed.
`distill-studio evaluate` itself refuses n = 10,000 on digits (it measures n samples against a reference of n real
digits, a fixed subset of the 1,797); this benchmark calls the same functions with the whole 1,797-image reference.

Ratio = clean-fid direct time / ours (target >= 1.0). Agreement: folder_fid equals compute_fid to 1e-6; the in-memory
FID equals the folder FID to 1e-5. Cache speed-up = cold reference time / warm reference time (and whole cold / warm).

Run:  .venv/bin/python benchmarks/eval.py [--n 10000] [--steps 1] [--repeats 3] [--threads T] [--note TEXT]
Writes benchmarks/results/eval.json and eval.md (--no-save: print only). About 1 to 3 minutes on 2 cores. On a machine
shared with another busy process, --threads 1 gives steadier figures (two spinning OpenMP threads next to it were about
twice as slow as one here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.data import DIGITS_SIZE, digits_tensors  # noqa: E402
from core.images import save_png, to_uint8  # noqa: E402
from core.metrics import feature_stats, fid_from_stats, folder_fid, get_extractor, images_to_features, resize_for  # noqa: E402
from core.noise import seeded_noise  # noqa: E402
from core.samplers import sample  # noqa: E402
from core.teachers import get_teacher_info, load_teacher  # noqa: E402
from storage.db import make_engine, make_session_factory  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from workers.reference import reference_stats  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BATCH = 256  # the batch size of images_to_features and folder_fid (their defaults); clean-fid is given the same
CLEAN_FID_DEFAULT_BATCH = 32  # cleanfid.fid.compute_fid's own default
REF_N = 1797  # all of scikit-learn's digits
TARGET_RATIO = 1.0
TOL_FOLDER = 1e-6  # folder_fid vs compute_fid
TOL_MEMORY = 1e-5  # in-memory vs folder
PATHS = {"memory_cold": "ours, in memory, reference computed (cold)",
         "memory_warm": "ours, in memory, reference from the cache (warm)",
         "folder": "ours, folder_fid",
         "clean_fid": f"clean-fid compute_fid direct (batch_size={BATCH})",
         "clean_fid_b32": f"clean-fid compute_fid direct (its default batch_size={CLEAN_FID_DEFAULT_BATCH})"}


# -- inputs ----------------------------------------------------------------------------------------------------

def teacher_samples(n: int, steps: int, batch: int = 500) -> torch.Tensor:
    """n digits-teacher samples at `steps` DDIM steps: seed s, class s % 10 (as workers.evaluate.generate draws)."""
    info = get_teacher_info("digits", None)
    teacher = load_teacher("digits")
    seeds = list(range(n))
    out = []
    with torch.no_grad():
        for lo in range(0, n, batch):
            chunk = seeds[lo:lo + batch]
            cond = torch.tensor(chunk, dtype=torch.long) % info.num_classes
            out.append(sample(teacher, seeded_noise(chunk, info.data_shape, 1), steps, cond))
    return torch.cat(out)


def write_pngs(x: torch.Tensor, folder: Path) -> None:
    """8-bit grayscale PNGs, named so that clean-fid's sorted glob reads them in order (core.images: the samplers'
    own rounding, hence the same uint8 values images_to_features sees)."""
    folder.mkdir(parents=True)
    for i, img in enumerate(to_uint8(x)):
        save_png(img, folder / f"{i:06d}.png")


def fresh_data_dir(root: Path, name: str):
    """A data dir with a freshly migrated SQLite database: (path, session factory, engine)."""
    data_dir = root / name
    data_dir.mkdir()
    url = f"sqlite:///{data_dir / 'studio.db'}"
    upgrade(url)
    engine = make_engine(url)
    return data_dir, make_session_factory(engine), engine


# -- the paths -------------------------------------------------------------------------------------------------

def ours_in_memory(x: torch.Tensor, module, data_dir: Path, factory) -> dict:
    """FID of in-memory samples as workers/evaluate.py measures it (its _evaluate_one, FID only)."""
    t0 = time.perf_counter()
    ref = reference_stats("digits", "digits", REF_N, data_dir=data_dir, device="cpu", session_factory=factory,
                          model=module)
    t1 = time.perf_counter()
    feats = images_to_features(module, x, device="cpu")
    fid = fid_from_stats(ref.mu, ref.sigma, *feature_stats(feats))
    t2 = time.perf_counter()
    return {"seconds": t2 - t0, "reference_seconds": t1 - t0, "features_fid_seconds": t2 - t1, "fid": fid,
            "cached": ref.cached, "reference_key": ref.key, "reference_hash": ref.digest}


def ours_folder(dir_gen: Path, dir_real: Path) -> dict:
    t0 = time.perf_counter()
    fid = folder_fid(dir_gen, dir_real, "digits")
    return {"seconds": time.perf_counter() - t0, "fid": fid}


def clean_fid_direct(dir_gen: Path, dir_real: Path, module, batch_size: int) -> dict:
    from cleanfid import fid as cleanfid

    t0 = time.perf_counter()
    value = cleanfid.compute_fid(str(dir_gen), str(dir_real), mode="clean", custom_feat_extractor=module,
                                 custom_fn_resize=resize_for("digits"), num_workers=0, device=torch.device("cpu"),
                                 batch_size=batch_size, verbose=False)
    return {"seconds": time.perf_counter() - t0, "fid": float(value)}


# -- report ----------------------------------------------------------------------------------------------------

def git_revision() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    rev = out.stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "core/metrics", "workers", "storage", "benchmarks/eval.py"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return rev + ("+dirty" if dirty else "")


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict:
    return {"host": socket.gethostname(), "machine": platform.machine(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "system": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__}


def summarise(runs: dict[str, list[dict]]) -> dict:
    out = {}
    for name, rs in runs.items():
        if not rs:
            continue
        best = min(rs, key=lambda r: r["seconds"])
        out[name] = {"label": PATHS[name], "best_s": round(best["seconds"], 3),
                     "median_s": round(statistics.median(r["seconds"] for r in rs), 3),
                     "all_s": [round(r["seconds"], 3) for r in rs], "fid": best["fid"]}
        if "reference_seconds" in best:
            out[name]["best_reference_s"] = round(min(r["reference_seconds"] for r in rs), 4)
            out[name]["all_reference_s"] = [round(r["reference_seconds"], 4) for r in rs]
            out[name]["best_features_fid_s"] = round(min(r["features_fid_seconds"] for r in rs), 3)
            out[name]["cached"] = [r["cached"] for r in rs]
    return out


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def spread(times: list[float]) -> float:
    """Run-to-run spread of one path: (slowest - fastest) / fastest."""
    return (max(times) - min(times)) / min(times)


def ratio_verdict(doc: dict, key: str) -> str:
    """met / NOT met; a shortfall smaller than the run-to-run spread of the two paths compared is said to be one."""
    ratio = doc["ratios"][key]
    if ratio >= TARGET_RATIO:
        return "met"
    noise = max(spread(doc["timings"][k]["all_s"]) for k in (key, "clean_fid"))
    if TARGET_RATIO - ratio < noise:
        return f"NOT met (short by {100 * (TARGET_RATIO - ratio):.1f} %, within the {100 * noise:.0f} % run-to-run spread)"
    return "NOT met"


def render(doc: dict) -> str:
    t, r, a, c, mr = doc["timings"], doc["ratios"], doc["agreement"], doc["cache"], doc["median_ratios"]
    s = doc["samples"]
    lines = ["# Evaluation speed: our path against clean-fid called directly", "",
             f"Generated by `benchmarks/eval.py`. FID of {s['n']:,} digits samples ({s['source']}) against all {REF_N:,} real "
             f"digits with the shipped `digits` extractor, on the CPU, {doc['threads']} torch thread(s) for every path, "
             f"batch size {BATCH}, best of {doc['repeats']} (paths interleaved round by round).", "",
             "## Figures against the targets", "",
             "| figure | measured (best of runs; of medians) | target | verdict |", "|---|---|---|---|"]
    for key, label in (("memory_cold", "clean-fid direct / ours in memory, cold (reference computed)"),
                       ("memory_warm", "clean-fid direct / ours in memory, warm (reference cached)"),
                       ("folder", "clean-fid direct / ours folder_fid")):
        lines.append(f"| {label} | {r[key]:.3f}× ({mr[key]:.3f}×) | ≥ {TARGET_RATIO:.1f}× | {ratio_verdict(doc, key)} |")
    lines += [f"| \\|folder_fid − compute_fid\\| | {a['folder_vs_clean_fid']:.1e} | ≤ {TOL_FOLDER:.0e} "
              f"| {verdict(a['folder_vs_clean_fid'] <= TOL_FOLDER)} |",
              f"| \\|in-memory FID − folder FID\\| | {a['memory_vs_folder']:.1e} | ≤ {TOL_MEMORY:.0e} "
              f"| {verdict(a['memory_vs_folder'] <= TOL_MEMORY)} |",
              f"| reference cache speed-up (cold / warm reference statistics) | {c['reference_speedup']:.0f}× "
              f"({1000 * c['cold_reference_s']:.0f} ms → {1000 * c['warm_reference_s']:.1f} ms) | — | — |",
              f"| whole in-memory evaluation, cold / warm | {c['total_speedup']:.2f}× | — | — |", "",
              "## Times", "", "| path | best | median | all runs | spread | FID |", "|---|---|---|---|---|---|"]
    for key in PATHS:
        if key in t:
            e = t[key]
            runs = ", ".join(f"{v:.2f}" for v in e["all_s"])
            lines.append(f"| {e['label']} | {e['best_s']:.2f} s | {e['median_s']:.2f} s | {runs} s "
                         f"| {100 * spread(e['all_s']):.0f} % | {e['fid']:.9f} |")
    lines += ["", f"In memory, the reference statistics took {1000 * t['memory_cold']['best_reference_s']:.0f} ms cold "
              f"(features of the {REF_N:,} real digits, the .npz written, the database row recorded) and "
              f"{1000 * t['memory_warm']['best_reference_s']:.1f} ms warm (database row looked up, .npz read); features of the "
              f"{s['n']:,} samples and the FID took {t['memory_warm']['best_features_fid_s']:.2f} s. Samples generated in "
              f"{s['generate_s']:.1f} s and written as PNGs in {s['png_s']:.1f} s (neither timed above).",
              "", "Agreement (absolute FID differences): " + ", ".join(f"{k} {v:.1e}" for k, v in a.items()) + ".",
              "", "## Run", "", "| git | when (UTC) | machine | threads | load avg (1, 5, 15 min) start → end | command |",
              "|---|---|---|---|---|---|"]
    m = doc["machine"]
    command = doc["command"].replace(shlex.quote(doc["note"]), "'…' (below)") if doc.get("note") else doc["command"]
    lines.append(f"| {doc['git']} | {doc['when']} | {m['host']}, {m['cpus']} CPUs, {m['machine']}, torch {m['torch']} "
                 f"| {doc['threads']} (interop {doc['interop_threads']}) | {doc['load_avg_start']} → {doc['load_avg_end']} "
                 f"| `{command}` |")
    lines += ["", "1-minute load average before each round: " + ", ".join(str(v) for v in doc["load_avg_rounds"]) + ". "
              "Spread: (slowest − fastest) / fastest of a path's runs."]
    if doc.get("note"):
        lines += ["", f"Note: {doc['note']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="samples to evaluate")
    parser.add_argument("--steps", type=int, default=1, help="DDIM steps of the digits teacher for the samples")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (best of)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every path (default: torch's)")
    parser.add_argument("--no-default-batch", action="store_true",
                        help=f"skip the extra clean-fid timing at its default batch_size={CLEAN_FID_DEFAULT_BATCH}")
    parser.add_argument("--note", default="", help="recorded with the results (e.g. 'the machine was shared')")
    parser.add_argument("--no-save", action="store_true", help="print only; leave benchmarks/results alone")
    args = parser.parse_args()
    if args.n < 2 or args.steps < 1 or args.repeats < 1:
        parser.error("--n must be at least 2, --steps and --repeats at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    meta = {"git": git_revision(), "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
            "command": shlex.join(["python", "benchmarks/eval.py", *sys.argv[1:]]), "note": args.note, "machine": machine(),
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "load_avg_start": load_avg(), "repeats": args.repeats, "batch_size": BATCH}
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        x = teacher_samples(args.n, args.steps)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        dir_gen, dir_real = root / "generated", root / "real"
        write_pngs(x, dir_gen)
        write_pngs(digits_tensors(DIGITS_SIZE)[0], dir_real)
        png_s = time.perf_counter() - t0
        meta["samples"] = {"n": args.n, "source": f"digits teacher, DDIM {args.steps} step(s), seed s as class s % 10",
                           "generate_s": round(gen_s, 1), "png_s": round(png_s, 1)}
        print(f"{args.n} samples in {gen_s:.1f} s, PNGs in {png_s:.1f} s; threads {meta['threads']}", flush=True)

        t0 = time.perf_counter()
        module = get_extractor("digits")
        meta["extractor_load_s"] = round(time.perf_counter() - t0, 4)
        images_to_features(module, x[:BATCH + 5])  # warm the extractor's kernels once, for every path alike

        runs: dict[str, list[dict]] = {name: [] for name in PATHS}
        meta["load_avg_rounds"] = []
        engines = []
        for rnd in range(args.repeats):
            meta["load_avg_rounds"].append(load_avg()[0])
            data_dir, factory, engine = fresh_data_dir(root, f"data{rnd}")
            engines.append(engine)
            runs["memory_cold"].append(ours_in_memory(x, module, data_dir, factory))
            runs["memory_warm"].append(ours_in_memory(x, module, data_dir, factory))
            runs["folder"].append(ours_folder(dir_gen, dir_real))
            runs["clean_fid"].append(clean_fid_direct(dir_gen, dir_real, module, BATCH))
            if rnd == 0 and not args.no_default_batch:
                runs["clean_fid_b32"].append(clean_fid_direct(dir_gen, dir_real, module, CLEAN_FID_DEFAULT_BATCH))
            print(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]['seconds']:.2f} s" for k, v in runs.items() if v),
                  flush=True)
        for engine in engines:
            engine.dispose()

    cold, warm = runs["memory_cold"], runs["memory_warm"]
    if any(r["cached"] for r in cold) or not all(r["cached"] for r in warm):
        raise SystemExit(f"cache state unexpected: cold {[r['cached'] for r in cold]}, warm {[r['cached'] for r in warm]}")
    timings = summarise(runs)
    fids = {k: v["fid"] for k, v in timings.items()}
    direct = timings["clean_fid"]["best_s"]
    ratios = {k: round(direct / timings[k]["best_s"], 3) for k in ("memory_cold", "memory_warm", "folder")}
    median_ratios = {k: round(timings["clean_fid"]["median_s"] / timings[k]["median_s"], 3) for k in ratios}
    agreement = {"folder_vs_clean_fid": abs(fids["folder"] - fids["clean_fid"]),
                 "memory_vs_folder": max(abs(r["fid"] - fids["folder"]) for r in cold + warm),
                 "memory_cold_vs_warm": max(abs(r["fid"] - cold[0]["fid"]) for r in cold + warm)}
    if "clean_fid_b32" in fids:
        agreement["clean_fid_b32_vs_b256"] = abs(fids["clean_fid_b32"] - fids["clean_fid"])
    cold_ref, warm_ref = timings["memory_cold"]["best_reference_s"], timings["memory_warm"]["best_reference_s"]
    cache = {"cold_reference_s": cold_ref, "warm_reference_s": warm_ref, "reference_speedup": round(cold_ref / warm_ref, 1),
             "total_speedup": round(timings["memory_cold"]["best_s"] / timings["memory_warm"]["best_s"], 3)}
    doc = {**meta, "load_avg_end": load_avg(), "seconds": round(time.monotonic() - started, 1),
           "reference": {"key": cold[0]["reference_key"], "n": REF_N}, "timings": timings, "ratios": ratios,
           "median_ratios": median_ratios,
           "agreement": agreement, "cache": cache,
           "targets": {"ratio_min": TARGET_RATIO, "folder_vs_clean_fid_max": TOL_FOLDER, "memory_vs_folder_max": TOL_MEMORY},
           "met": {**{f"ratio_{k}": v >= TARGET_RATIO for k, v in ratios.items()},
                   "folder_vs_clean_fid": agreement["folder_vs_clean_fid"] <= TOL_FOLDER,
                   "memory_vs_folder": agreement["memory_vs_folder"] <= TOL_MEMORY}}
    text = render(doc)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "eval.json").write_text(json.dumps(doc, indent=1) + "\n")
        (RESULTS / "eval.md").write_text(text)


if __name__ == "__main__":
    main()
