"""The quality report: benchmarks/results/quality.md and quality.json rebuilt from the rows `quality.py` stores, with
the quality targets measured against them."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = RESULTS / "rows"


def load_rows(part: str) -> list[dict]:
    rows = [json.loads(p.read_text()) for p in sorted((ROWS / part).glob("*.json"))]
    order = {"teacher": 0, "real": 1}
    return sorted(rows, key=lambda r: (order.get(r["model"].split()[0], 2), r["model"], r["steps"], r.get("preset", ""),
                                       r.get("seed", 0)))


def table(rows: list[dict], keys: list[str]) -> list[str]:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys)
                     + " |")
    return lines


def ablation_summary(rows: list[dict], ablations: list) -> list[dict]:
    """Mean (and per-seed values) of each metric per (method, steps, variant)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["steps"], r["variant"], r["preset"]), []).append(r)
    out = []
    for (model, steps, variant, preset), rs in groups.items():
        row = {"model": model, "steps": steps, "variant": variant, "preset": preset, "seeds": len(rs)}
        for k in ("covered", "quality", "energy", "sliced_w2"):
            vals = [r[k] for r in rs]
            row[k] = float(np.mean(vals))
            row[f"{k}_range"] = f"{min(vals):.3g}–{max(vals):.3g}"
        out.append(row)
    ranks = {(m, s, [p for _, p in v][i]): i for m, s, v in ablations for i in range(len(v))}
    return sorted(out, key=lambda r: ([(m, s) for m, s, _ in ablations].index((r["model"], r["steps"])),
                                      ranks.get((r["model"], r["steps"], r["preset"]), 99)))


def target_checks(toy: list[dict], digits: list[dict], spread: list[dict]) -> list[str]:
    """The quality targets, measured: one line per student with the ratio and whether it meets the target. Where
    `quality.py spread` measured a student and the teacher over several sample sets, the ratio of their mean FIDs
    decides, since one set's FID of the teacher moves by about a third from set to set."""
    lines, one_step = [], {}
    spread_of = {(r["model"], r["steps"], r.get("preset", "")): r for r in spread}
    teacher_sets = spread_of.get(("teacher (DDIM)", 50, ""))
    teacher_toy = {r["steps"]: r for r in toy if r["model"].startswith("teacher")}
    for r in toy:
        if r["model"].startswith("teacher") or r["steps"] != 1:
            continue
        ratio = teacher_toy[1]["energy"] / r["energy"]
        ok = r["covered"] >= 7 and ratio >= 3
        lines.append(f"| toy2d | {r['model']} | 1 | covers {r['covered']}/8 (≥ 7); energy {ratio:.1f}× below the "
                     f"teacher's 1-step (≥ 3×) | {'met' if ok else 'missed'} |")
    teacher = {r["steps"]: r for r in digits if r["model"] == "teacher (DDIM)"}
    ancestral = {r["steps"]: r for r in digits if r["model"] == "teacher (ancestral)"}
    for r in digits:
        if r["model"].startswith(("teacher", "real")):
            continue
        to_best = r["fid"] / teacher[50]["fid"]
        checks = [f"FID {to_best:.2f}× the teacher's 50-step"]
        sets = spread_of.get((r["model"], r["steps"], r.get("preset", "")))
        label = r["model"] if "+" not in r.get("preset", "") else f"{r['model']} `{r['preset']}`"
        if sets and teacher_sets:
            to_best = sets["fid_mean"] / teacher_sets["fid_mean"]
            checks[0] += f" on the row's samples, {to_best:.2f}× over {sets['repeats']} sample sets each"
        if r["steps"] == 1:
            one_step[label] = to_best
        ok = True
        if r["steps"] <= 2:
            gain = teacher[r["steps"]]["fid"] / r["fid"]
            checks += ["(≤ 2×; best ≤ 1.2×)", f"{gain:.1f}× better than the teacher's {r['steps']}-step DDIM (≥ 3×)"]
            ok = to_best <= 2 and gain >= 3
        else:
            for name, ref in (("DDIM", teacher), ("ancestral", ancestral)):
                if r["steps"] in ref:
                    checks.append(f"teacher's {r['steps']}-step {name} FID / this: {ref[r['steps']]['fid'] / r['fid']:.2f}")
        checks.append(f"{r['cpu_minutes']} CPU min (≤ 15)")
        ok = ok and r["cpu_minutes"] <= 15
        verdict = ("met" if ok else "missed") if r["steps"] <= 2 else \
            ("CPU met" if ok else "CPU missed") + "; no quality target beyond 2 steps"
        lines.append(f"| digits | {label} | {r['steps']} | {'; '.join(checks)} | {verdict} |")
    if one_step:
        best = min(one_step, key=one_step.get)
        lines.append(f"| digits | best 1-step | 1 | {best}: {one_step[best]:.2f}× the teacher's 50-step FID (≤ 1.2×) | "
                     f"{'met' if one_step[best] <= 1.2 else 'missed'} |")
    return ["## Targets", "", "| benchmark | model | steps | measured | target |", "|---|---|---|---|---|",
            *lines, ""] if lines else []


def _spread(r: dict, key: str = "fid") -> str:
    return "–".join(f"{v:.3g}" for v in (min(r[f"{key}_sets"]), max(r[f"{key}_sets"])))


def _percent_spread(r: dict) -> str:
    return "–".join(f"{100 * v:.1f}" for v in (min(r["alignment_all_sets"]), max(r["alignment_all_sets"])))


def _gan_verdict(with_gan: list[float], without: list[float]) -> str:
    if max(with_gan) < min(without):
        return "the GAN helps (every set)"
    if min(with_gan) > max(without):
        return "the GAN hurts (every set)"
    return "no measurable difference (the sets overlap)"


# The shapes targets that name a row (not a method's behaviour): MMD's 8-step student, and DMD2's 1-step student with
# and without its GAN.
SHAPES_CLOSE_ROW = ("mmd", 8)
SHAPES_GAN_ROWS = (("dmd2", 1, "shapes"), ("dmd2", 1, "shapes+no-gan"))


def shapes_target_checks(rows: list[dict]) -> list[str]:
    """The shapes benchmark's targets, measured: FID ratios use the mean over the three seed sets; "measurably worse"
    means that every set of the k-step teacher is worse than every set of its 50 steps (the sets' ranges do not
    overlap)."""
    teacher = {r["steps"]: r for r in rows if r["model"].startswith("teacher")}
    students = [r for r in rows if not r["model"].startswith("teacher")]
    if 50 not in teacher:
        return []
    best, lines = teacher[50], []
    for k in (4, 8):
        if k in teacher:
            worse_fid = min(teacher[k]["fid_sets"]) > max(best["fid_sets"])
            worse_alignment = max(teacher[k]["alignment_all_sets"]) < min(best["alignment_all_sets"])
            worse = worse_fid or worse_alignment
            lines.append(f"| teacher | {k} | FID {teacher[k]['fid']:.3g} (sets {_spread(teacher[k])}) against 50 steps' "
                         f"{best['fid']:.3g} (sets {_spread(best)}); every attribute right "
                         f"{100 * teacher[k]['alignment_all']:.1f}% (sets {_percent_spread(teacher[k])}) against "
                         f"{100 * best['alignment_all']:.1f}% (sets {_percent_spread(best)}) | "
                         + ("met: measurably worse in " + " and ".join(
                             x for x, w in (("FID", worse_fid), ("alignment", worse_alignment)) if w)
                            if worse else "missed: not measurably worse (saturated)") + " |")
    one_step = {}
    for r in students:
        label = r["model"] + (f" `{r['preset']}`" if "+" in r.get("preset", "") else "")
        checks, ok = [f"FID {r['fid'] / best['fid']:.2f}× the teacher's 50-step"], r["cpu_minutes"] <= 30
        close_row = (r["model"], r["steps"]) == SHAPES_CLOSE_ROW
        if close_row:
            gap = 100 * (best["alignment_all"] - r["alignment_all"])
            checks.append(f"(≤ 1.1×); all-right alignment {100 * r['alignment_all']:.1f}%, {gap:.1f} points below the "
                          "teacher's (≤ 2)")
            ok = ok and r["fid"] <= 1.1 * best["fid"] and gap <= 2
        if r["steps"] == 1 and 1 in teacher:
            one_step[label] = r["fid"] / best["fid"]
            gain = teacher[1]["fid"] / r["fid"]
            checks.append(f"{gain:.1f}× better than the teacher's 1-step (≥ 3×)")
            ok = ok and gain >= 3
        checks.append(f"{r['cpu_minutes']} CPU min (≤ 30)")
        verdict = "met" if ok else "missed"
        if r["steps"] > 1 and not close_row:
            verdict = "CPU " + verdict + "; no quality target"
        lines.append(f"| {label} | {r['steps']} | {'; '.join(checks)} | {verdict} |")
    if one_step:
        top = min(one_step, key=one_step.get)
        lines.append(f"| best 1-step | 1 | {top}: {one_step[top]:.2f}× the teacher's 50-step FID (≤ 1.5×) | "
                     f"{'met' if one_step[top] <= 1.5 else 'missed'} |")
    gan = {(r["model"], r["steps"], r.get("preset")): r for r in students}
    if all(key in gan for key in SHAPES_GAN_ROWS):
        with_gan, without = (gan[key] for key in SHAPES_GAN_ROWS)
        lines.append(f"| dmd2 GAN | 1 | FID with GAN {with_gan['fid']:.3g} (sets {_spread(with_gan)}), without "
                     f"{without['fid']:.3g} (sets {_spread(without)}); all-right alignment "
                     f"{100 * with_gan['alignment_all']:.1f}% / {100 * without['alignment_all']:.1f}% | "
                     f"{_gan_verdict(with_gan['fid_sets'], without['fid_sets'])} |")
    return ["## shapes targets", "", "| model | steps | measured | target |", "|---|---|---|---|", *lines, ""]


def report(ablations: list, rare_weight: float) -> None:
    """Rebuild results/quality.json and quality.md from the stored rows; `ablations` orders the ablation rows."""
    doc = {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__}
    lines = ["# Student quality and ablations", "",
             "Generated by `benchmarks/quality.py` from the rows in `benchmarks/results/rows/`; every row records its "
             "git revision, seed, iterations and the command that trained it.", ""]
    toy = load_rows("toy2d")
    if toy:
        doc["toy2d"] = toy
        lines += ["## toy2d ring (n = 8192; energy distance and sliced W2 to the true mixture)", "",
                  *table(toy, ["model", "steps", "covered", "quality", "energy", "sliced_w2", "iterations",
                               "cpu_minutes"]), ""]
    digits = load_rows("digits")
    if digits:
        doc["digits"] = digits
        lines += ["## digits (n = 2000; FID, KID, precision and recall on the digits classifier's features)", "",
                  *table(digits, ["model", "steps", "preset", "fid", "kid", "precision", "recall", "accuracy", "samples_per_s",
                                  "iterations", "cpu_minutes",
                                  "peak_rss_mb"]), "",
                  "samples_per_s is comparable only between rows timed in the same session (`quality.py speed`); a "
                  "k-step student runs the teacher's network k times per sample, as the teacher's DDIM at k steps "
                  "does, so at equal load their speeds match. cpu_minutes is the training process's CPU time.", ""]
    spread = load_rows("digits-spread")
    if spread:
        doc["digits_spread"] = spread
        ref = next((r for r in spread if r["model"].startswith("teacher")), None)
        lines += ["## digits FID over disjoint sets of sample seeds (`quality.py spread`)", "",
                  "Each set is n samples from fresh seeds (set 0 is the digits row's own). The ratio is of the means, "
                  "to the teacher's 50-step DDIM; its range takes every pair of sets.", "",
                  "| model | steps | preset | sets × n | FID per set | FID mean ± sd | ratio to teacher 50 | KID mean |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in spread:
            ratio = "" if ref is None or r is ref else (
                f"{r['fid_mean'] / ref['fid_mean']:.2f} ({min(r['fids']) / max(ref['fids']):.2f}–"
                f"{max(r['fids']) / min(ref['fids']):.2f})")
            lines.append(f"| {r['model']} | {r['steps']} | {r.get('preset', '')} | {r['repeats']} × {r['n']} | "
                         f"{' / '.join(f'{v:.3f}' for v in r['fids'])} | {r['fid_mean']:.3f} ± {r['fid_sd']:.3f} | "
                         f"{ratio} | {r['kid_mean']:.4f} |")
        lines.append("")
    shapes = load_rows("shapes")
    if shapes:
        doc["shapes"] = shapes
        lines += ["## shapes (3 disjoint seed sets of shapes-test prompts, n each; FID, KID, precision and recall on "
                  "the shapes classifier's features; alignment: share of prompts drawn with every attribute right)", "",
                  *table(shapes, ["model", "steps", "preset", "nfe", "n", "fid", "kid", "precision", "recall",
                                  "alignment_all", "alignment", "ms_per_image", "iterations", "cpu_minutes",
                                  "peak_rss_mb"]), "", *shapes_target_checks(shapes)]
    legacy = load_rows("digits-mlp")
    if legacy:  # not comparable with the classifier FID (other features): shown until every row is re-measured with it
        doc["digits_mlp_features"] = legacy
        lines += ["## digits, earlier measurement (Fréchet distance on an sklearn MLP's hidden features, n = 2000)", "",
                  "Not comparable with the FID above (different features). Rows move to the table above as they are "
                  "re-measured with `quality.py digits`.", "",
                  *table(legacy, ["model", "steps", "fd", "accuracy", "iterations", "cpu_minutes", "peak_rss_mb"]), ""]
    lines += target_checks(toy, digits, spread) if toy and digits else []
    ablation_rows = load_rows("ablations")
    if ablation_rows:
        summary = ablation_summary(ablation_rows, ablations)
        doc["ablations"] = {"runs": ablation_rows, "summary": summary}
        lines += ["## Ablations on the toy2d ring (mean over seeds; range in brackets)", "",
                  "| method | steps | variant | preset | seeds | modes covered | quality | energy | sliced W2 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in summary:
            lines.append(f"| {r['model']} | {r['steps']} | {r['variant']} | `{r['preset']}` | {r['seeds']} | "
                         f"{r['covered']:.3g} ({r['covered_range']}) | {r['quality']:.3g} ({r['quality_range']}) | "
                         f"{r['energy']:.3g} ({r['energy_range']}) | {r['sliced_w2']:.3g} ({r['sliced_w2_range']}) |")
        lines.append("")
    rare = load_rows("rare-mode")
    if rare:
        doc["rare_mode"] = rare
        lines += [f"## Rare mode: the ring with one mode at {rare_weight:.0%} of the mass (mode-coverage comparison)", "",
                  *table(rare, ["model", "variant", "seed", "iterations", "covered", "rare_share", "quality",
                                "cpu_minutes"]), ""]
    (RESULTS / "quality.json").write_text(json.dumps(doc, indent=1))
    (RESULTS / "quality.md").write_text("\n".join(lines))
    print("\n".join(lines))
