"""Runs tab: the New-run form, the live runs table, and a run's detail (loss curves, previews, log, cancel/resume).

Progress comes from the runs table on a `gr.Timer`, never from `gr.Progress` (a queue slot held for hours)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from app.studio.context import Studio
from app.studio.exports import archive, export_text, queue_export
from app.studio.files import servable
from app.studio.forms import knob_sets, knobs, presets
from app.studio.prompt_fields import takes_prompts
from app.studio.run_inputs import inputs_help, text_fields
from core.catalogue import distillable_teachers, list_teachers
from core.method_specs import METHOD_CONFIGS
from storage import repo, views
from storage.artifacts import resolve
from storage.db import session_scope
from storage.models import Run
from workers.submit import BrokerUnavailable

RUN_COLUMNS = ["id", "kind", "teacher", "method", "steps", "status", "progress %", "started", "duration", "error"]
LOG_LINES = 200
REFRESH_S = 3.0
VISIBLE_FOR_PROMPTS = ("guidance",)  # knobs shown on the form itself, outside "Method knobs", for text-to-image teachers


# -- Handlers --------------------------------------------------------------------------------------------------

def network_teachers(ctx: Studio) -> list[str]:
    """Teachers a student can be distilled from (core.catalogue.is_distillable): networks, built in or imported."""
    return [t.name for t in distillable_teachers(ctx.data_dir)]


def start_run(ctx: Studio, user: str, teacher: str, method: str, preset: str, student_steps, iterations, seed,
              knob_values: dict[str, Any], *, prompt_file=None, data_folder=None) -> tuple[int, str]:
    """Queue a distill run from the form; (run id, message). ValueError names the bad field; nothing is written.
    Text-to-image teachers also take an uploaded prompt file and a data folder (app/studio/run_inputs.py)."""
    for name, value in (("student_steps", student_steps), ("iterations", iterations), ("seed", seed)):
        if value is None or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{name}: must be a whole number, got {value!r}")
    if method not in METHOD_CONFIGS:
        raise ValueError(f"method: choose one of {', '.join(METHOD_CONFIGS)}")
    sets = knob_sets(method, preset, knob_values)
    text = text_fields(ctx, teacher, prompt_file, data_folder)
    spec = {"teacher": teacher, "method": method, "preset": preset, "student_steps": int(student_steps),
            "iterations": int(iterations), "seed": int(seed), "sets": list(sets), **text}
    ctx.throttle(user)
    try:
        run_id = ctx.jobs.submit("distill", spec)
    except BrokerUnavailable as exc:
        return -1, f"Queued, but not yet sent: {exc}"
    changed = f" with {', '.join(sets)}" if sets else ""
    return run_id, (f"Run {run_id} queued: {method} ({int(student_steps)}-step) from {teacher}, preset {preset}{changed}"
                    f"{_inputs_text(text)}.")


def _inputs_text(text: dict[str, str | None]) -> str:
    if text.get("prompts"):
        return f", on the prompts of {Path(text['prompts']).name}"
    if text.get("data"):
        return f", on the images of {text['data']}"
    return ", on its benchmark's captioned scenes" if text else ""


def teacher_preset(ctx: Studio, teacher: str | None, method: str) -> str:
    """The method's preset named for the teacher's benchmark (toy2d, digits, shapes), else its default."""
    bench = next((t.benchmark for t in list_teachers(ctx.data_dir) if t.name == teacher), "")
    own = "toy2d" if bench.startswith("toy2d") else bench
    return own if own in presets(method) else "default"


def display_status(run: Run, now: datetime | None = None) -> str:
    """The stored status, plus the two transient states a user must see: cancelling and stalled."""
    now = now or datetime.now(UTC)
    if run.status == "running" and run.cancel_requested:
        return "cancelling"
    if run.status == "running" and run.lease_expires_at is not None and run.lease_expires_at < now:
        return "stalled"
    return run.status


def _describe(run: Run) -> tuple[str, str, str]:
    """(teacher or model, method, steps) of any kind of run."""
    s = run.spec
    if run.kind == "distill":
        return s["teacher"], s["method"], str(s.get("student_steps") or "")
    if run.kind == "teacher":
        return s["name"], "teacher training", ""
    if run.kind == "sample":
        return s["model"], "sample", str(s.get("steps") or "")
    if run.kind == "export":
        return s["model"], "export", ""
    return ", ".join(s["models"]), "evaluate " + "+".join(s["metrics"]), ""


def _duration(run: Run, now: datetime) -> str:
    if run.started_at is None:
        return ""
    seconds = int(((run.finished_at or now) - run.started_at).total_seconds())
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def runs_rows(ctx: Studio, limit: int = 200) -> list[list[Any]]:
    now = datetime.now(UTC)
    rows = []
    with session_scope(ctx.factory) as session:
        for run in repo.list_runs(session=session, limit=limit):
            teacher, method, steps = _describe(run)
            progress = round(100 * run.step / run.total, 1) if run.total else (100.0 if run.status == "succeeded" else 0.0)
            started = run.started_at.strftime("%Y-%m-%d %H:%M:%S") if run.started_at else ""
            rows.append([run.id, run.kind, teacher, method, steps, display_status(run, now), progress, started,
                         _duration(run, now), (run.error or "")[:120]])
    return rows


def run_choices(ctx: Studio, kind: str | None = None) -> list[tuple[str, int]]:
    with session_scope(ctx.factory) as session:
        return [(f"#{r.id} {r.kind} · {' · '.join(x for x in _describe(r)[:2] if x)}", r.id)
                for r in repo.list_runs(session=session, kind=kind, limit=200)]


def previews(ctx: Studio, run: Run) -> list[tuple[int, Path]]:
    """(training step, PNG) of a run's preview grids, oldest first."""
    folder = resolve(ctx.data_dir, run.out_dir) / "previews" if run.out_dir else None
    if folder is None or not folder.is_dir():
        return []
    return sorted((int(p.stem.removeprefix("step-")), p) for p in folder.glob("step-*.png"))


def preview_at(ctx: Studio, run_id: int, step) -> tuple[str | None, str]:
    """The preview at or below `step` (the slider snaps down to a step that exists) and its caption."""
    with session_scope(ctx.factory) as session:
        run = repo.get_run(session=session, run_id=int(run_id))
        found = previews(ctx, run) if run else []
    if not found:
        return None, "no previews yet"
    below = [(s, p) for s, p in found if s <= int(step or 0)] or found[:1]
    s, p = below[-1]
    return servable(ctx.data_dir, p), f"previews at training step {s} (fixed seeds)"


def log_tail(ctx: Studio, run: Run, lines: int = LOG_LINES) -> str:
    """The run's log (run.log, written by its worker), else its metrics rows; the last `lines` lines."""
    if not run.out_dir:
        return ""
    folder = resolve(ctx.data_dir, run.out_dir)
    for name in ("run.log", "metrics.jsonl"):
        path = folder / name
        if path.is_file():
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - 256 * 1024))  # the tail only, however long the log
                text = f.read().decode("utf-8", "replace")
            return "\n".join(text.splitlines()[-lines:])
    return ""


def metrics_frame(rows: list[dict[str, Any]]) -> pd.DataFrame | None:
    """Long (step, key, value) rows with fixed dtypes, or None for no rows: a plot that once received an empty frame
    never draws its lines or legend afterwards (measured with Gradio 6.31), so it gets no value instead."""
    if not rows:
        return None
    return pd.DataFrame(rows, columns=["step", "key", "value"]).astype({"step": "int64", "key": object, "value": "float64"})


def run_detail(ctx: Studio, run_id) -> dict[str, Any]:
    """Everything the detail view shows for one run."""
    if run_id in (None, ""):
        return {"summary": "Select a run.", "metrics": metrics_frame([]), "log": "",
                "preview_steps": [], "status": None}
    with session_scope(ctx.factory) as session:
        run = repo.get_run(session=session, run_id=int(run_id))
        if run is None:
            raise ValueError(f"run: no run with id {run_id}")
        series = views.metric_series(session=session, run_id=run.id, prefix="loss/")
        status, total = display_status(run), run.total
        found = previews(ctx, run)
        log = log_tail(ctx, run)
        summary = (f"**Run {run.id}** · {run.kind} · **{status}** · step {run.step} of {total or '?'} · "
                   f"attempts {run.attempts}\n\n```json\n{json.dumps(run.spec, indent=1)}\n```")
        if run.error:
            summary += f"\n\n**Error:** {run.error}"
    return {"summary": summary, "metrics": metrics_frame(series), "log": log,
            "preview_steps": [s for s, _ in found], "status": status}


def cancel_run(ctx: Studio, run_id) -> str:
    status = ctx.jobs.cancel(int(run_id))
    return f"Run {run_id}: {'cancelled' if status == 'cancelled' else 'cancelling (stops at its next checkpoint)'}."


def resume_run(ctx: Studio, run_id) -> str:
    try:
        ctx.jobs.resume(int(run_id))
    except BrokerUnavailable as exc:
        return f"Run {run_id} queued again, but not yet sent: {exc}"
    return f"Run {run_id} queued again; it continues from its latest checkpoint."


# -- Layout and wiring ----------------------------------------------------------------------------------------

def _knob_input(knob):
    common = {"label": knob.name, "info": knob.info or None, "elem_id": f"knob-{knob.name}", "interactive": True}
    if knob.choices:
        return gr.Dropdown(list(knob.choices), value=knob.value, **common)
    if knob.kind == "bool":
        return gr.Checkbox(value=bool(knob.value), **common)
    if knob.kind in ("int", "float"):
        return gr.Number(value=knob.value, precision=0 if knob.kind == "int" else None, **common)
    return gr.Textbox(value=str(knob.value), **common)


def _error(exc: Exception) -> str:
    return f"**Error** — {exc}"


def build_runs_tab(ctx: Studio, timer: gr.Timer) -> None:
    teachers = network_teachers(ctx)
    methods = list(METHOD_CONFIGS)
    default_teacher = "toy2d-ring" if "toy2d-ring" in teachers else (teachers[0] if teachers else None)

    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            gr.Markdown("### New run")
            teacher = gr.Dropdown(teachers, value=default_teacher, label="Teacher", elem_id="new-teacher", interactive=True)
            method = gr.Dropdown(methods, value="dmd2", label="Method", elem_id="new-method", interactive=True)
            student_steps = gr.Number(1, precision=0, label="Student steps", elem_id="new-steps", interactive=True,
                                      info="dmd2: default 1; any count ≥ 1")
            preset = gr.Dropdown(presets("dmd2"), value="toy2d", label="Preset", elem_id="new-preset", interactive=True,
                                 info="benchmark scale (toy2d, digits, shapes), paper settings or an ablation")
            iterations = gr.Number(2000, precision=0, label="Iterations", elem_id="new-iterations", interactive=True)
            seed = gr.Number(0, precision=0, label="Seed", elem_id="new-seed", interactive=True)
            with gr.Group(visible=takes_prompts(ctx, default_teacher), elem_id="new-text") as text_group:
                text_help = gr.Markdown(inputs_help(ctx, default_teacher), elem_id="new-text-help")
                prompt_file = gr.File(label="Prompt file (prompts)", file_types=[".txt"], type="filepath",
                                      elem_id="new-prompts")
                data_folder = gr.Textbox(label="Data folder (data)", elem_id="new-data",
                                         info="absolute; only under STUDIO_IMPORT_ROOTS (default DATA_DIR/import)")

            @gr.render(inputs=[teacher, method, preset])
            def render_knobs(teacher_name, method_name, preset_name):
                try:
                    fields = knobs(method_name, preset_name)
                except ValueError as exc:
                    gr.Markdown(_error(exc))
                    return
                # A text-to-image teacher's guidance is shown on the form itself: it decides what the student copies.
                shown = [k for k in fields if k.name in VISIBLE_FOR_PROMPTS] if takes_prompts(ctx, teacher_name) else []
                inputs = [_knob_input(k) for k in shown]
                with gr.Accordion("Method knobs", open=False, elem_id="knobs"):
                    inputs += [_knob_input(k) for k in fields if k not in shown]
                names = [k.name for k in shown] + [k.name for k in fields if k not in shown]

                def on_start(request: gr.Request, t, m, p, k, n, s, prompts, data, *values):
                    try:
                        user = ctx.require_researcher(request)
                        run_id, message = start_run(ctx, user, t, m, p, k, n, s, dict(zip(names, values)),
                                                    prompt_file=prompts, data_folder=data)
                    except (ValueError, PermissionError) as exc:
                        return _error(exc), gr.skip()
                    return message, gr.Dropdown(choices=run_choices(ctx), value=run_id if run_id > 0 else None)

                start.click(on_start, [teacher, method, preset, student_steps, iterations, seed, prompt_file,
                                       data_folder, *inputs], [form_status, run_pick], concurrency_limit=None)

            start = gr.Button("Start run", variant="primary", elem_id="start-run")
            form_status = gr.Markdown(elem_id="form-status")

        with gr.Column(scale=3):
            gr.Markdown("### Runs")
            table = gr.Dataframe(headers=RUN_COLUMNS, value=runs_rows(ctx), interactive=False, elem_id="runs-table",
                                 wrap=True, max_height=360)
            with gr.Row():
                run_pick = gr.Dropdown(run_choices(ctx), value=None, label="Run", elem_id="run-pick", scale=3)
                cancel = gr.Button("Cancel", elem_id="cancel-run", scale=1)
                resume = gr.Button("Resume", elem_id="resume-run", scale=1)
                export = gr.Button("Export", elem_id="export-run", scale=1)
            action_status = gr.Markdown(elem_id="run-action-status")
            with gr.Row():
                export_info = gr.Markdown(elem_id="export-info")
                download = gr.Button("Download archive", size="sm", elem_id="export-download", scale=0)
            archive_file = gr.File(label="Archive", elem_id="export-archive", visible=False)
            summary = gr.Markdown(elem_id="run-summary")
            losses = gr.LinePlot(x="step", y="value", color="key", label="Losses", elem_id="loss-plot", height=280)
            with gr.Row():
                preview_step = gr.Slider(0, 1, value=1, step=1, label="Preview step", elem_id="preview-step")
            preview = gr.Image(label="Previews", type="filepath", format="png", interactive=False,
                               elem_id="preview-image", buttons=["download", "fullscreen"])
            log = gr.Code(label="Log (last 200 lines)", language=None, interactive=False, elem_id="run-log",
                          max_lines=20)

    def on_method(name, teacher_name):
        cls = METHOD_CONFIGS[name]
        one_step = cls.one_step_only
        steps = 1 if one_step else cls().student_steps
        hint = f"{name}: one-step only" if one_step else f"{name}: default {steps}; any count ≥ 1"
        return gr.Dropdown(presets(name), value=teacher_preset(ctx, teacher_name, name)), gr.Number(steps, info=hint)

    method.change(on_method, [method, teacher], [preset, student_steps])

    def on_teacher(name, method_name):
        text = takes_prompts(ctx, name)
        return gr.Dropdown(value=teacher_preset(ctx, name, method_name)), gr.Group(visible=text), inputs_help(ctx, name)

    teacher.change(on_teacher, [teacher, method], [preset, text_group, text_help])

    seen = gr.State([])  # the preview steps on screen: a tick moves the slider only when new ones appear

    def _preview_widgets(run_id, steps):
        if not steps:
            return gr.Slider(minimum=0, maximum=1, value=0, step=1), None
        stride = steps[1] - steps[0] if len(steps) > 1 else 1
        slider = gr.Slider(minimum=steps[0], maximum=max(steps[-1], steps[0] + 1), value=steps[-1], step=stride)
        return slider, preview_at(ctx, run_id, steps[-1])[0]

    def show(run_id):
        detail = run_detail(ctx, run_id)
        slider, image = _preview_widgets(run_id, detail["preview_steps"])
        return detail["summary"], detail["metrics"], detail["log"], slider, image, detail["preview_steps"]

    def refresh(run_id, shown):
        detail = run_detail(ctx, run_id)
        if detail["preview_steps"] == shown:
            return runs_rows(ctx), detail["summary"], detail["metrics"], detail["log"], gr.skip(), gr.skip(), gr.skip()
        slider, image = _preview_widgets(run_id, detail["preview_steps"])
        return runs_rows(ctx), detail["summary"], detail["metrics"], detail["log"], slider, image, detail["preview_steps"]

    run_pick.change(show, run_pick, [summary, losses, log, preview_step, preview, seen])
    preview_step.release(lambda r, s: preview_at(ctx, r, s)[0] if r else None, [run_pick, preview_step], preview)
    timer.tick(refresh, [run_pick, seen], [table, summary, losses, log, preview_step, preview, seen],
               concurrency_limit=None, show_progress="hidden")

    def select_row(evt: gr.SelectData, rows):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return gr.Dropdown(choices=run_choices(ctx), value=int(rows.iloc[row, 0]))

    table.select(select_row, table, run_pick)

    def act(fn):
        def handler(run_id, request: gr.Request):
            try:
                ctx.require_researcher(request)
                if run_id in (None, ""):
                    raise ValueError("run: select a run first")
                return fn(ctx, run_id)
            except (ValueError, PermissionError) as exc:
                return _error(exc)
        return handler

    cancel.click(act(cancel_run), run_pick, action_status)
    resume.click(act(resume_run), run_pick, action_status)

    def on_export(run_id, request: gr.Request):
        try:
            message = queue_export(ctx, ctx.require_researcher(request), run_id)
        except (ValueError, PermissionError) as exc:
            return _error(exc), gr.skip()
        return message, export_text(ctx, run_id)

    export.click(on_export, run_pick, [action_status, export_info])

    def on_download(run_id, request: gr.Request):
        try:
            ctx.require_researcher(request)
            return gr.skip(), gr.File(value=archive(ctx, run_id), visible=True)
        except (ValueError, PermissionError) as exc:
            return _error(exc), gr.skip()

    download.click(on_download, run_pick, [action_status, archive_file], concurrency_limit=2)
    run_pick.change(lambda r: (export_text(ctx, r), gr.File(value=None, visible=False)), run_pick,
                    [export_info, archive_file])
    timer.tick(lambda r: export_text(ctx, r), run_pick, export_info, show_progress="hidden", concurrency_limit=None)
