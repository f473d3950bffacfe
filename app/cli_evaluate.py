"""`distill-studio evaluate`, `fid` and `leaderboard`: measuring models (registered on the app in app/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli_common import Bar, cli_errors, emit, jobs, submit_job
from app.provenance import SMALL_SAMPLE_LABEL, describe, flag_small_samples, reference_text, row_note, seeds_text
from core.eval_specs import PROMPT_SETS, REFERENCE_METRICS
from storage.settings import get_settings

# Display order of the leaderboard's columns (workers/evaluate.py stores these names); others follow by name.
METRIC_COLUMNS = ("fid", "kid", "precision", "recall", "density", "coverage", "accuracy", "alignment", "alignment_all",
                  "modes_covered", "modes_quality", "ms_per_image", "images_per_s")


@cli_errors
def evaluate_cmd(
    model: list[str] = typer.Option(..., "--model", help="teacher:NAME[@STEPS] (default 50 DDIM steps), run:ID[@STEPS] "
                                    "or a student folder; repeat for several models."),
    metrics: str = typer.Option("fid,kid,precision,recall,speed", help="Comma-separated: fid, kid, precision, recall, "
                                "density, coverage, accuracy (digits), modes (toy2d), alignment (text-to-image models "
                                "on shapes prompts), speed."),
    n: int = typer.Option(1000, help="Samples per model, seeds SEED .. SEED+N-1; at most the reference's size "
                          "(digits: 1797)."),
    seed: int = typer.Option(0, help="First seed; class-conditional models draw seed s as class s % 10."),
    extractor: str = typer.Option(None, help="Feature extractor (default: digits for digits models, toy2d for toy2d, "
                                  "shapes on the built-in prompt sets)."),
    guidance: float = typer.Option(1.0, help="CFG weight w for class-conditional and text-to-image teachers (w != 1 "
                                   "doubles the NFE)."),
    prompts: str = typer.Option(None, help="Text-to-image models only: a built-in prompt set (shapes-test, "
                                "shapes-heldout; default for the shapes teacher and its students: shapes-test) or a "
                                "prompt file, one prompt per line; seed s draws prompt s (a file's s % its length)."),
    submit: bool = typer.Option(False, "--submit", help="Queue the evaluation for a worker and print its id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Measure models against cached reference statistics (FID, KID, precision/recall, accuracy, prompt alignment,
    speed) and store the results for `leaderboard`: in the foreground (rows with no run), or queued for a worker with
    --submit."""
    if prompts is not None and prompts not in PROMPT_SETS:
        prompts = str(Path(prompts).expanduser().resolve())  # a file: absolute, as a queued spec stores it
    spec = {"models": model, "metrics": metrics.split(","), "n": n, "seed": seed, "extractor": extractor,
            "guidance": guidance, "prompts": prompts}
    if submit:
        submit_job("evaluate", spec, as_json)
        return
    from workers.evaluate import evaluate

    factory = jobs().factory
    bar = Bar("evaluate", enabled=not as_json)
    try:
        result = evaluate(model, spec["metrics"], n, seed, extractor=extractor, guidance=guidance, prompts=prompts,
                          data_dir=get_settings().data_dir, device=get_settings().device, progress=bar,
                          session_factory=factory)
    finally:
        bar.close()
    emit(as_json, result, "\n".join(_model_line(m) for m in result["models"]))


def _model_line(m: dict) -> str:
    """'MODEL @STEPS (NFE k, REFERENCE): fid 16.156, kid 0.01 (n=10, extractor ..., seeds 0-9; small-sample ...),
    ms_per_image 3.1': the values measured against the reference are followed by what they were measured on."""
    measured = [f"{k} {v:.5g}" for k, v in m["values"].items() if m["reference"] and k in REFERENCE_METRICS]
    others = [f"{k} {v:.5g}" for k, v in m["values"].items() if not (m["reference"] and k in REFERENCE_METRICS)]
    parts = ([", ".join(measured) + f" ({describe(m)})"] if measured else []) + others
    return (f"{m['model']} @{m['steps']} (NFE {m['nfe']}" + (f", prompts {m['prompts']}" if m.get("prompts") else "")
            + (f", {m['reference']}" if m["reference"] else "") + "): " + ", ".join(parts))


@cli_errors
def fid_cmd(
    dir_a: Path = typer.Argument(..., help="A folder of images."),
    dir_b: Path = typer.Argument(..., help="Another folder of images."),
    extractor: str = typer.Option(..., help="Feature extractor: inception (needs its weights on disk), digits."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """FID between two image folders, computed by clean-fid with the studio's extractor."""
    from workers.evaluate import folder_fid

    result = folder_fid(dir_a, dir_b, extractor, device=get_settings().device)
    emit(as_json, result, f"FID {result['fid']:.6g} ({extractor}; {result['n_a']} vs {result['n_b']} images)"
         + (f"; {SMALL_SAMPLE_LABEL}" if result["small_sample"] else ""))


@cli_errors
def leaderboard_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Stored evaluations: one row per (model, steps) with the latest value of each metric and what it was measured on
    (n, reference and its hash, seeds; a small-sample estimate below 2000 samples), plus FID-vs-NFE series."""
    from storage import repo
    from storage.db import session_scope

    with session_scope(jobs().factory) as session:
        board = flag_small_samples(repo.leaderboard(session=session))
    emit(as_json, board, _leaderboard_table(board["rows"]))


def _leaderboard_table(rows: list[dict]) -> str:
    if not rows:
        return "no evaluations yet (run `distill-studio evaluate`)"
    found = {name for row in rows for name in row["metrics"]}
    columns = [c for c in METRIC_COLUMNS if c in found] + sorted(found - set(METRIC_COLUMNS))
    width = max(len(r["model"]) for r in rows)
    prompts = any(r.get("prompts") for r in rows)  # a column only once a text-to-image model has been evaluated
    seeds = max(len("seeds"), *(len(seeds_text(r)) for r in rows))
    lines = [f"{'model':{width}}  steps  nfe  " + "  ".join(f"{c:>12}" for c in columns)
             + f"  {'n':>6}  {'seeds':>{seeds}}  reference" + ("  prompts" if prompts else "")]
    for r in rows:
        values = "  ".join(f"{r['metrics'][c]:>12.5g}" if c in r["metrics"] else f"{'-':>12}" for c in columns)
        note = row_note(r)
        lines.append(f"{r['model']:{width}}  {r['steps']:>5}  {r['nfe']:>3}  {values}  {r['n']:>6}  "
                     f"{seeds_text(r):>{seeds}}  {reference_text(r)}" + (f"  {r['prompts'] or '-'}" if prompts else "")
                     + (f"  ({note})" if note else ""))
    return "\n".join(lines)
