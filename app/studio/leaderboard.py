"""Leaderboard tab: the evaluation store as a table, FID against NFE, and a form that queues evaluation jobs."""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr
import pandas as pd

from app.provenance import SMALL_SAMPLE_LABEL, UNKNOWN_HASH, row_note, seeds_text
from app.studio.context import Studio
from core import eval_specs
from core.catalogue import distillable_teachers
from core.refs import TEACHER_STEPS, ModelRef, parse_ref
from core.shapes import EVAL_SETS
from storage import repo
from storage.db import session_scope
from workers.submit import BrokerUnavailable

COLUMNS = ["model", "steps", "prompts", "NFE", "FID", "KID", "precision", "recall", "accuracy", "alignment",
           "all right", "ms/image", "n", "reference", "reference hash", "seeds", "note"]
_METRIC_COLUMNS = {"FID": "fid", "KID": "kid", "precision": "precision", "recall": "recall", "accuracy": "accuracy",
                   "alignment": "alignment", "all right": "alignment_all", "ms/image": "ms_per_image"}
DEFAULT_METRICS = ["fid", "kid", "precision", "speed"]
DEFAULT_PROMPTS = "the teacher's own"  # the prompt-set choice that sends none (core.eval_prompts.DEFAULT_PROMPTS)
MARKER = "† "
PLOT_HEIGHT = 300
LEGEND = ("n, reference (with its statistics' content hash) and seeds: what a row's FID (else its latest value) was "
          "measured on; the note names values measured on other samples. Text-to-image models are ranked per prompt "
          "set; their NFE counts a guided step as 2 and alignment is the share of prompt attributes drawn (all right: "
          "images with every attribute right). "
          f"{MARKER}{SMALL_SAMPLE_LABEL}: below {eval_specs.SMALL_SAMPLE_N} samples FID and KID move by more from one "
          "seed set to the next than the students differ, so such rows do not rank them.")


class Board(NamedTuple):
    table: pd.DataFrame
    fid: pd.DataFrame | None        # NFE, FID, model: one point per row with an FID
    alignment: pd.DataFrame | None  # NFE, all right %, model: one point per row with alignment
    references: str                 # the line under the plots: the n of their points and the FIDs' references


# -- Handlers --------------------------------------------------------------------------------------------------

def board(ctx: Studio) -> Board:
    """The table and the FID- and alignment-vs-NFE plots from the evaluation store. A plot's series name carries its
    prompt set, n, and the small-sample mark; `references` lists the reference statistics the FIDs were measured
    against."""
    with session_scope(ctx.factory) as session:
        data = repo.leaderboard(session=session)
        names = model_names(session, [r["model"] for r in data["rows"]])
    table = [[names[r["model"]], r["steps"], r["prompts"], r["nfe"],
              *[_fmt(r["metrics"].get(key)) for key in _METRIC_COLUMNS.values()], r["n"], r["reference"],
              (r["reference_hash"] or UNKNOWN_HASH) if r["reference"] else "", seeds_text(r), row_note(r, MARKER)]
             for r in data["rows"]]
    fid, aligned, references = [], [], {}
    for r in data["rows"]:
        metrics = r["metrics"]
        if "fid" in metrics:
            fid.append({"NFE": r["nfe"], "FID": metrics["fid"], "model": _series(names[r["model"]], r, r["n"]),
                        "n": r["n"]})
            references[r["reference"]] = r["reference_hash"] or UNKNOWN_HASH
        if "alignment_all" in metrics:
            aligned.append({"NFE": r["nfe"], "all right %": round(100 * metrics["alignment_all"], 2),
                            "model": _series(names[r["model"]], r, r["n"]), "n": r["n"]})
    text = "; ".join(f"{ref} {digest}" for ref, digest in references.items())
    parts = [_samples("FID vs NFE", fid), _samples("alignment vs NFE", aligned),
             f"FID measured against: {text}." if text else ""]
    return Board(pd.DataFrame(table, columns=COLUMNS), _frame(fid, "FID"), _frame(aligned, "all right %"),
                 " ".join(p for p in parts if p))


def _samples(name: str, points: list[dict]) -> str:
    """'FID vs NFE: n = 200 († small-sample estimate …).' or 'n = 200–2000': the samples behind a plot's points (its
    legend, which names each series' n too, can be cut short by the page)."""
    if not points:
        return ""
    ns = sorted({p["n"] for p in points})
    span = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    small = f" ({MARKER.strip()} {SMALL_SAMPLE_LABEL})" if eval_specs.is_small_sample(ns[0]) else ""
    return f"{name}: n = {span}{small}."


def _series(name: str, row: dict, n: int) -> str:
    """A plotted point's series: model, prompt set, n, and the small-sample mark."""
    small = f" {MARKER.strip()}" if row["reference"] and eval_specs.is_small_sample(n) else ""
    return f"{name}" + (f" ({row['prompts']})" if row["prompts"] else "") + f" · n={n}{small}"


def _frame(points: list[dict], y: str) -> pd.DataFrame | None:
    """Fixed dtypes, or no value at all for no points (a plot given an empty frame never draws later data; see
    runs.metrics_frame)."""
    if not points:
        return None
    frame = pd.DataFrame(points, columns=["NFE", y, "model"])  # n went into the series name and the title
    return frame.astype({"NFE": "int64", y: "float64", "model": object})


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
    for t in distillable_teachers(ctx.data_dir):
        out += [(f"teacher {t.name} @ {s} steps", ModelRef.teacher(t.name, s).text) for s in (1, 2, 4, 8, TEACHER_STEPS)]
    with session_scope(ctx.factory) as session:
        for run in repo.list_runs(session=session, kind="distill", status="succeeded", limit=500):
            out.append((f"run {run.id} · {run.spec['method']}-{run.spec.get('student_steps') or ''} of "
                        f"{run.spec['teacher']}", ModelRef.run(run.id).text))
    return out


def queue_evaluation(ctx: Studio, user: str, models: list[str], metrics: list[str], n, prompts: str | None = None,
                     guidance=1.0) -> str:
    """Queue the evaluation of `models`; text-to-image ones on `prompts` (a built-in set, none: the teacher's own), a
    teacher at `guidance`. Students are always sampled unguided, so with guidance the teachers and the students go
    in two jobs. Every spec is validated before the first is queued, so a refusal queues nothing."""
    if not models:
        raise ValueError("models: choose at least one model")
    if not metrics:
        raise ValueError("metrics: choose at least one metric")
    if n is None or (isinstance(n, float) and not n.is_integer()):
        raise ValueError(f"n: must be a whole number, got {n!r}")
    if guidance is None:
        raise ValueError("guidance: give a number (1: none)")
    prompts = None if prompts in (None, "", DEFAULT_PROMPTS) else prompts
    base = {"metrics": list(metrics), "n": int(n), "prompts": prompts}
    teachers = [m for m in models if _is_teacher(m)]
    guided = float(guidance) != 1.0 and teachers
    groups = [(teachers, float(guidance)), ([m for m in models if m not in teachers], 1.0)] if guided else \
        [(list(models), float(guidance))]
    specs = [{**base, "models": group, "guidance": w} for group, w in groups if group]
    for spec in specs:
        ctx.jobs.validate("evaluate", spec)
    ctx.throttle(user)
    ids = []
    try:
        for spec in specs:
            ids.append(ctx.jobs.submit("evaluate", spec))
    except BrokerUnavailable as exc:
        return f"Queued, but not yet sent: {exc}"
    runs = " and ".join(f"run {i}" for i in ids)
    on = f", prompts {prompts}" if prompts else ""
    split = " (teachers guided, students unguided)" if len(ids) > 1 else ""
    return (f"Evaluation {runs} queued ({len(models)} model(s), n = {int(n)}{on}){split}; rows appear here as each "
            "finishes.")


def _is_teacher(model: str) -> bool:
    try:
        return parse_ref(model).is_teacher
    except ValueError:
        return False  # the job's own validation names it


# -- Layout and wiring ----------------------------------------------------------------------------------------

def build_leaderboard_tab(ctx: Studio, timer: gr.Timer, tab: gr.Tab | None = None) -> None:
    shown = board(ctx)
    with gr.Row():
        with gr.Column(scale=3):
            table = gr.Dataframe(shown.table, interactive=False, elem_id="lb-table", wrap=True)
            gr.Markdown(LEGEND, elem_id="lb-legend")
            # Points, not lines: a student has a single NFE, and a line through one point draws nothing.
            with gr.Row():
                plot = gr.ScatterPlot(shown.fid, x="NFE", y="FID", color="model", label="FID vs NFE",
                                      elem_id="lb-plot", height=PLOT_HEIGHT,
                                      x_title="NFE (network evaluations per sample)")
                aligned = gr.ScatterPlot(shown.alignment, x="NFE", y="all right %", color="model",
                                         label="Alignment vs NFE (text-to-image)", elem_id="lb-align-plot",
                                         height=PLOT_HEIGHT,
                                         x_title="NFE (a guided step counts 2)",
                                         y_title="images with every attribute right (%)")
            references = gr.Markdown(shown.references, elem_id="lb-references")
        with gr.Column(scale=1, min_width=300):
            gr.Markdown("### Evaluate")
            models = gr.Dropdown(model_choices(ctx), multiselect=True, label="Models", elem_id="lb-models")
            metrics = gr.CheckboxGroup(list(eval_specs.METRICS), value=DEFAULT_METRICS, label="Metrics",
                                       elem_id="lb-metrics", info="accuracy: digits; modes: toy2d; alignment: prompts")
            n = gr.Number(1000, precision=0, label="Samples per model", elem_id="lb-n",
                          info=f"{eval_specs.MIN_N}..{eval_specs.MAX_N}; below {eval_specs.SMALL_SAMPLE_N}: "
                               "a small-sample estimate")
            prompts = gr.Dropdown([DEFAULT_PROMPTS, *EVAL_SETS], value=DEFAULT_PROMPTS, label="Prompt set",
                                  elem_id="lb-prompts", info="text-to-image models: seed s draws prompt s of the set")
            guidance = gr.Number(1.0, minimum=0, maximum=20, label="Teacher guidance", elem_id="lb-guidance",
                                 info="text-to-image and class-conditional teachers; students are never guided")
            go = gr.Button("Evaluate", variant="primary", elem_id="lb-evaluate")
            status = gr.Markdown(elem_id="lb-status")

    def on_evaluate(chosen, picked, count, prompt_set, w, request: gr.Request):
        try:
            return queue_evaluation(ctx, ctx.require_researcher(request), chosen, picked, count, prompt_set, w)
        except (ValueError, PermissionError) as exc:
            return f"**Error** — {exc}"

    go.click(on_evaluate, [models, metrics, n, prompts, guidance], status, concurrency_limit=None)
    models.focus(lambda: gr.Dropdown(choices=model_choices(ctx)), None, models)
    outputs = [table, plot, aligned, references]
    timer.tick(lambda: tuple(board(ctx)), None, outputs, show_progress="hidden", concurrency_limit=None)
    if tab is not None:
        # A plot whose data changed while its tab was hidden was seen to keep only its earlier series once shown
        # (Gradio 6.31, the README screenshots): draw it again whenever the tab is opened.
        tab.select(lambda: tuple(board(ctx)), None, outputs, show_progress="hidden", concurrency_limit=None)
