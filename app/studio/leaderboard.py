"""Leaderboard tab: the evaluation store as a table, FID against NFE, and a form that queues evaluation jobs."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from app.provenance import SMALL_SAMPLE_LABEL, UNKNOWN_HASH, row_note, seeds_text
from app.studio.context import Studio
from core import eval_specs
from core.catalogue import distillable_teachers
from core.refs import TEACHER_STEPS, ModelRef, parse_ref
from storage import repo
from storage.db import session_scope
from workers.submit import BrokerUnavailable

COLUMNS = ["model", "steps", "NFE", "FID", "KID", "precision", "recall", "accuracy", "ms/image", "n", "reference",
           "reference hash", "seeds", "note"]
_METRIC_COLUMNS = {"FID": "fid", "KID": "kid", "precision": "precision", "recall": "recall", "accuracy": "accuracy",
                   "ms/image": "ms_per_image"}
DEFAULT_METRICS = ["fid", "kid", "precision", "speed"]
MARKER = "† "
LEGEND = ("n, reference (with its statistics' content hash) and seeds: what a row's FID (else its latest value) was "
          "measured on; the note names values measured on other samples. "
          f"{MARKER}{SMALL_SAMPLE_LABEL}: below {eval_specs.SMALL_SAMPLE_N} samples FID and KID move by more from one "
          "seed set to the next than the students differ, so such rows do not rank them.")


# -- Handlers --------------------------------------------------------------------------------------------------

def board(ctx: Studio) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, long FID-vs-NFE rows) from the evaluation store."""
    with session_scope(ctx.factory) as session:
        data = repo.leaderboard(session=session)
        names = model_names(session, [r["model"] for r in data["rows"]])
    table = [[names[r["model"]], r["steps"], r["nfe"],
              *[_fmt(r["metrics"].get(key)) for key in _METRIC_COLUMNS.values()], r["n"], r["reference"],
              (r["reference_hash"] or UNKNOWN_HASH) if r["reference"] else "", seeds_text(r), row_note(r, MARKER)]
             for r in data["rows"]]
    points = [{"NFE": nfe, "FID": fid, "model": names[model]} for model, series in data["fid_vs_nfe"].items()
              for nfe, fid in series]
    # No rows: no value at all (a plot given an empty frame never draws later data; see runs.metrics_frame).
    plot = pd.DataFrame(points, columns=["NFE", "FID", "model"]).astype({"NFE": "int64", "FID": "float64", "model": object}) \
        if points else None
    return pd.DataFrame(table, columns=COLUMNS), plot


def model_names(session, refs: list[str]) -> dict[str, str]:
    """Display names: run:ID gets its method, steps and teacher, so the table reads without the Runs tab."""
    names = {}
    for ref in refs:
        run_id = _run_id(ref)
        run = repo.get_run(session=session, run_id=run_id) if run_id is not None else None
        names[ref] = (f"{ref} {run.spec['method']}-{run.spec.get('student_steps') or ''} of {run.spec['teacher']}"
                      if run is not None and run.kind == "distill" else ref)
    return names


def _run_id(model: str) -> int | None:
    """The run id of a stored run:ID model key; None for teachers (teacher:NAME[+cfgW]) and folders."""
    try:
        ref = parse_ref(model)
    except ValueError:
        return None
    return ref.run_id if ref.kind == "run" and ref.steps is None else None


def _fmt(value):
    return None if value is None else float(f"{value:.4g}")


def model_choices(ctx: Studio) -> list[tuple[str, str]]:
    """Evaluable models: network teachers at the usual DDIM step counts and every succeeded distill run."""
    out = []
    for t in distillable_teachers(ctx.data_dir, text_to_image=False):
        out += [(f"teacher {t.name} @ {s} steps", ModelRef.teacher(t.name, s).text) for s in (1, 2, 4, 8, TEACHER_STEPS)]
    with session_scope(ctx.factory) as session:
        for run in repo.list_runs(session=session, kind="distill", status="succeeded", limit=500):
            out.append((f"run {run.id} · {run.spec['method']}-{run.spec.get('student_steps') or ''} of "
                        f"{run.spec['teacher']}", ModelRef.run(run.id).text))
    return out


def queue_evaluation(ctx: Studio, user: str, models: list[str], metrics: list[str], n) -> str:
    if not models:
        raise ValueError("models: choose at least one model")
    if not metrics:
        raise ValueError("metrics: choose at least one metric")
    if n is None or (isinstance(n, float) and not n.is_integer()):
        raise ValueError(f"n: must be a whole number, got {n!r}")
    ctx.throttle(user)
    try:
        run_id = ctx.jobs.submit("evaluate", {"models": list(models), "metrics": list(metrics), "n": int(n)})
    except BrokerUnavailable as exc:
        return f"Queued, but not yet sent: {exc}"
    return f"Evaluation run {run_id} queued ({len(models)} model(s), n = {int(n)}); rows appear here as each finishes."


# -- Layout and wiring ----------------------------------------------------------------------------------------

def build_leaderboard_tab(ctx: Studio, timer: gr.Timer) -> None:
    table_value, plot_value = board(ctx)
    with gr.Row():
        with gr.Column(scale=3):
            table = gr.Dataframe(table_value, interactive=False, elem_id="lb-table", wrap=True)
            gr.Markdown(LEGEND, elem_id="lb-legend")
            # Points, not lines: a student has a single NFE, and a line through one point draws nothing.
            plot = gr.ScatterPlot(plot_value, x="NFE", y="FID", color="model", label="FID vs NFE", elem_id="lb-plot",
                                  height=300, x_title="NFE (network evaluations per sample)")
        with gr.Column(scale=1, min_width=300):
            gr.Markdown("### Evaluate")
            models = gr.Dropdown(model_choices(ctx), multiselect=True, label="Models", elem_id="lb-models")
            metrics = gr.CheckboxGroup(list(eval_specs.METRICS), value=DEFAULT_METRICS, label="Metrics",
                                       elem_id="lb-metrics", info="accuracy: digits; modes: toy2d")
            n = gr.Number(1000, precision=0, label="Samples per model", elem_id="lb-n",
                          info=f"{eval_specs.MIN_N}..{eval_specs.MAX_N}; below {eval_specs.SMALL_SAMPLE_N}: "
                               "a small-sample estimate")
            go = gr.Button("Evaluate", variant="primary", elem_id="lb-evaluate")
            status = gr.Markdown(elem_id="lb-status")

    def on_evaluate(chosen, picked, count, request: gr.Request):
        try:
            return queue_evaluation(ctx, ctx.require_researcher(request), chosen, picked, count)
        except (ValueError, PermissionError) as exc:
            return f"**Error** — {exc}"

    go.click(on_evaluate, [models, metrics, n], status, concurrency_limit=None)
    models.focus(lambda: gr.Dropdown(choices=model_choices(ctx)), None, models)
    timer.tick(lambda: board(ctx), None, [table, plot], show_progress="hidden", concurrency_limit=None)
