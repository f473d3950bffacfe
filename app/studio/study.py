"""Study tab (researchers): create a blind A/B study, draw its images, build the pool, follow the results, export.

Raters rate at /rate (app/rate/); nothing on this tab ever reaches them."""

from __future__ import annotations

import secrets
from typing import Any

import gradio as gr

from app.studio import study_pool
from app.studio.compare import parse_steps, student_choices, student_run_id
from app.studio.context import Studio
from app.studio.files import served_dir
from app.studio.prompt_fields import PROMPT_SETS, parse_guidance, parse_prompts, prompt_defaults, set_prompts
from app.studio.study_export import write_export
from core.catalogue import distillable_teachers, get_teacher_info
from core.refs import ModelRef, student_steps
from core.specs import default_guidance, parse_seeds
from storage import repo, studies
from storage.db import session_scope

DEFAULTS = {"pairs_per_model_pair": 20, "gold_rate": 0.07, "repeat_rate": 0.05, "quota": 200, "undo_s": 10.0}
STUDY_COLUMNS = ["id", "name", "status", "variants", "pairs", "gold", "votes", "raters"]


# -- Handlers --------------------------------------------------------------------------------------------------

def image_teachers(ctx: Studio) -> list[str]:
    return [t.name for t in distillable_teachers(ctx.data_dir) if t.is_image]


def parse_classes(text: str, num_classes: int) -> list[int | None]:
    if not num_classes:
        return [None]
    try:
        classes = list(parse_seeds(text, limit=num_classes))
    except ValueError as exc:
        raise ValueError(f"classes: {str(exc).removeprefix('seeds: ')}") from None
    bad = [c for c in classes if c >= num_classes]
    if bad:
        raise ValueError(f"classes: must be in [0, {num_classes - 1}], got {bad[0]}")
    return classes


def _fraction(value, field: str, hi: float) -> float:
    if value is None or not 0 <= float(value) <= hi:
        raise ValueError(f"{field}: must be between 0 and {hi:g} %, got {value!r}")
    return float(value) / 100


def _count(value, field: str, lo: int, hi: int) -> int:
    if value is None or float(value) != int(float(value)) or not lo <= int(float(value)) <= hi:
        raise ValueError(f"{field}: a whole number in [{lo}, {hi}], got {value!r}")
    return int(float(value))


def create_study(ctx: Studio, user: str, name: str, teacher: str, teacher_steps: str, students: list[str],
                 classes_text: str, seeds_text: str, pairs, gold_pct, repeat_pct, quota, prompts_text: str = "",
                 guidance=None) -> tuple[int, str]:
    """Validate the form, write the draft study with its variants and queue the sample jobs its pool needs.
    A text-to-image teacher's conditions are prompts (one per line) and its rows are drawn at `guidance` (none: its
    default). ValueError names the field; nothing is written then."""
    if not name or not name.strip():
        raise ValueError("name: give the study a name (raters see it: say nothing about the models)")
    if teacher not in image_teachers(ctx):
        raise ValueError(f"teacher: studies need an image teacher ({', '.join(image_teachers(ctx))}), got {teacher!r}")
    info = get_teacher_info(teacher, ctx.data_dir)
    steps = parse_steps(teacher_steps)
    prompts = parse_prompts(prompts_text) if info.is_text_to_image else []
    classes = list(range(len(prompts))) if prompts else parse_classes(classes_text, info.num_classes)
    seeds = list(parse_seeds(seeds_text, limit=10_000))
    config = {"pairs_per_model_pair": _count(pairs, "pairs per model pair", 1, 10_000),
              "gold_rate": _fraction(gold_pct, "gold %", 30), "repeat_rate": _fraction(repeat_pct, "repeat %", 30),
              "quota": _count(quota, "quota", 1, 100_000), "undo_s": DEFAULTS["undo_s"], "classes": classes,
              "seeds": seeds}
    guided = ""
    if prompts:
        w = parse_guidance(guidance, default_guidance(info))
        config.update(prompts=prompts, guidance=w)
        guided = f", w={w:g}" if w != 1.0 else ""
    anchor = max(steps)
    variants = [{"model": ModelRef.teacher(teacher).text, "steps": s, "checkpoint": 0,
                 "label": f"teacher {teacher} @ {s} steps{guided}", "is_teacher": s == anchor}
                for s in sorted(steps, reverse=True)]
    valid = {ref for _, ref in student_choices(ctx, teacher)}
    with session_scope(ctx.factory) as session:
        for ref in students or []:
            if ref not in valid:
                raise ValueError(f"students: {ref} is not a distill run of {teacher} with weights")
            run = repo.get_run(session=session, run_id=student_run_id(ref))
            step, sampled = repo.checkpoint_steps(session=session, run_id=run.id)[-1], student_steps(run.spec)
            variants.append({"model": ref, "steps": sampled, "checkpoint": step,
                             "label": f"{run.spec['method']}-{sampled} run {run.id} @ step {step}",
                             "is_teacher": False})
        config["variants"] = [v["label"] for v in variants]
        if len(variants) < 2:
            raise ValueError("students: pick at least one student (or two teacher step counts)")
        study = studies.create_study(session=session, name=name, teacher=teacher, config=config, variants=variants,
                                     created_by=user)
        study_id = study.id
    queued = study_pool.request_images(ctx, user, study_id)
    return study_id, (f"Study {study_id} created with {len(variants)} variants; {len(queued)} sample job(s) queued "
                      "for its images.")


def studies_rows(ctx: Studio) -> list[list[Any]]:
    rows = []
    with session_scope(ctx.factory) as session:
        for study in studies.list_studies(session=session):
            pairs = studies.pair_counts(session=session, study_id=study.id)
            counts = studies.study_counts(session=session, study_id=study.id)
            rows.append([study.id, study.name, study.status, len(study.config.get("variants", [])),
                         pairs.get("normal", 0), pairs.get("gold_broken", 0) + pairs.get("gold_identical", 0),
                         counts["votes"], counts["raters"]])
    return rows


def study_choices(ctx: Studio) -> list[tuple[str, int]]:
    with session_scope(ctx.factory) as session:
        return [(f"#{s.id} {s.name}", s.id) for s in studies.list_studies(session=session)]


def study_state(ctx: Studio, study_id) -> tuple[str, bool, str]:
    """(summary markdown, pool can be built, status)."""
    with session_scope(ctx.factory) as session:
        study = studies.get_study(session=session, study_id=int(study_id))
        if study is None:
            raise ValueError(f"study: no study with id {study_id}")
        status, config = study.status, dict(study.config)
        pairs = studies.pair_counts(session=session, study_id=study.id)
    conditions = f"{len(config['prompts'])} prompts" if config.get("prompts") else f"classes {config['classes']}"
    lines = [f"**{study.name}** · {status} · variants: " + ", ".join(config["variants"]),
             f"{conditions} · seeds {len(config['seeds'])} · {config['pairs_per_model_pair']} pairs per "
             f"model pair · gold {config['gold_rate']:.0%} · repeats {config['repeat_rate']:.0%} · quota "
             f"{config['quota']} per rater"]
    ready = False
    if status == "draft":
        text, ready = study_pool.status_text(ctx, int(study_id))
        lines.append(text)
    else:
        lines.append(f"pool: {pairs.get('normal', 0)} pairs + "
                     f"{pairs.get('gold_broken', 0) + pairs.get('gold_identical', 0)} gold; raters rate at /rate")
    return "\n\n".join(lines), ready, status


def generate_images(ctx: Studio, user: str, study_id) -> str:
    queued = study_pool.request_images(ctx, user, int(study_id))
    return f"{len(queued)} sample job(s) queued." if queued else "Nothing to generate: every image is drawn or drawing."


def open_study(ctx: Studio, study_id) -> str:
    counts = study_pool.build_pool(ctx, int(study_id))
    return f"Study {study_id} is open: {counts['normal']} pairs and {counts['gold']} gold pairs; raters rate at /rate."


def close_study(ctx: Studio, study_id) -> str:
    with session_scope(ctx.factory) as session:
        studies.set_status(session=session, study_id=int(study_id), status="closed")
    return f"Study {study_id} is closed: raters get no more pairs; results and export stay."


def export_votes(ctx: Studio, study_id, fmt: str, include_gold: bool) -> list[str]:
    """One file per criterion in FastChat's clean-battle shape, under served/exports/<random>/ (unguessable: the rows
    name the models, and only researchers reach the studio's files)."""
    folder = served_dir(ctx.data_dir) / "exports" / secrets.token_hex(8)
    return [str(p) for p in write_export(ctx.factory, int(study_id), folder, fmt, include_gold)]


# -- Layout and wiring ----------------------------------------------------------------------------------------

def build_study_tab(ctx: Studio, timer: gr.Timer) -> None:
    from app.studio.study_results import build_results

    teachers = image_teachers(ctx)
    default = "digits" if "digits" in teachers else (teachers[0] if teachers else None)
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            gr.Markdown("### New study")
            name = gr.Textbox(label="Study name", elem_id="st-name", info="raters see it: say nothing about the models")
            teacher = gr.Dropdown(teachers, value=default, label="Teacher", elem_id="st-teacher", interactive=True)
            teacher_steps = gr.Textbox("50", label="Teacher steps", elem_id="st-teacher-steps",
                                       info="the most steps is the anchor (rating 1000); more make extra variants")
            students = gr.CheckboxGroup(student_choices(ctx, default) if default else [], label="Students",
                                        elem_id="st-students")
            refresh_students = gr.Button("Refresh students", size="sm", elem_id="st-refresh")
            classes = gr.Textbox("0-9", label="Classes", elem_id="st-classes", info="the conditions raters judge")
            with gr.Group(visible=False, elem_id="st-text") as text_group:
                prompt_set = gr.Dropdown(PROMPT_SETS, value="typed", label="Prompt set",
                                         elem_id="st-prompt-set", info="fills Prompts with its first three; edit freely")
                prompts = gr.Textbox("", lines=3, label="Prompts", elem_id="st-prompts",
                                     info="the conditions raters judge, one per line; raters read the prompt")
                guidance = gr.Number(None, minimum=0, maximum=20, label="Teacher guidance", elem_id="st-guidance",
                                     info="the teacher rows' classifier-free w")
            seeds = gr.Textbox("0-9", label="Seeds", elem_id="st-seeds")
            pairs = gr.Number(DEFAULTS["pairs_per_model_pair"], precision=0, label="Pairs per model pair",
                              elem_id="st-pairs", interactive=True)
            gold = gr.Number(round(100 * DEFAULTS["gold_rate"], 2), label="Gold %", elem_id="st-gold", interactive=True,
                             info="broken-vs-clean and identical pairs that check attention")
            repeat = gr.Number(round(100 * DEFAULTS["repeat_rate"], 2), label="Repeat %", elem_id="st-repeat", interactive=True,
                               info="judged pairs shown again with sides swapped")
            quota = gr.Number(DEFAULTS["quota"], precision=0, label="Quota per rater", elem_id="st-quota",
                              interactive=True)
            create = gr.Button("Create study", variant="primary", elem_id="st-create")
            create_status = gr.Markdown(elem_id="st-create-status")
        with gr.Column(scale=3):
            table = gr.Dataframe(studies_rows(ctx), headers=STUDY_COLUMNS, interactive=False, elem_id="st-table")
            pick = gr.Dropdown(study_choices(ctx), value=None, label="Study", elem_id="st-pick", interactive=True)
            summary = gr.Markdown(elem_id="st-summary")
            with gr.Row():
                generate = gr.Button("Generate images", elem_id="st-generate")
                build = gr.Button("Build pool and open", variant="primary", elem_id="st-open")
                close = gr.Button("Close study", elem_id="st-close")
            action = gr.Markdown(elem_id="st-action")
            build_results(ctx, pick)
            with gr.Row():
                fmt = gr.Radio(["csv", "jsonl"], value="csv", label="Export format", elem_id="st-format")
                with_gold = gr.Checkbox(False, label="Include gold votes", elem_id="st-with-gold")
                export = gr.Button("Export votes", elem_id="st-export")
            files = gr.File(label="Exported votes", file_count="multiple", elem_id="st-files")

    def on_teacher(name):
        text, first, guided = prompt_defaults(ctx, name)
        return (gr.CheckboxGroup(choices=student_choices(ctx, name), value=[]), gr.Textbox(visible=not text),
                gr.Group(visible=text), first, guided)

    teacher.change(on_teacher, teacher, [students, classes, text_group, prompts, guidance])
    prompt_set.change(lambda name, choice: set_prompts(ctx, name, choice), [teacher, prompt_set], prompts)
    refresh_students.click(lambda t: gr.CheckboxGroup(choices=student_choices(ctx, t)), teacher, students)

    def guarded(fn, n_outputs: int = 1):
        def handler(request: gr.Request, *args):
            try:
                user = ctx.require_researcher(request)
                return fn(user, *args)
            except (ValueError, PermissionError) as exc:
                out = (f"**Error** — {exc}",) + (gr.skip(),) * (n_outputs - 1)
                return out if n_outputs > 1 else out[0]
        return handler

    def on_create(user, *values):
        study_id, message = create_study(ctx, user, *values)
        return message, studies_rows(ctx), gr.Dropdown(choices=study_choices(ctx), value=study_id)

    create.click(guarded(on_create, 3), [name, teacher, teacher_steps, students, classes, seeds, pairs, gold, repeat, quota,
                                         prompts, guidance], [create_status, table, pick], concurrency_limit=None)

    def show(study_id, request: gr.Request):
        if study_id in (None, ""):
            return "", studies_rows(ctx)
        try:
            ctx.require_researcher(request)
            return study_state(ctx, study_id)[0], studies_rows(ctx)
        except (ValueError, PermissionError) as exc:
            return f"**Error** — {exc}", gr.skip()

    pick.change(show, pick, [summary, table])
    timer.tick(show, pick, [summary, table], show_progress="hidden", concurrency_limit=None)
    generate.click(guarded(lambda user, s: generate_images(ctx, user, _need(s))), pick, action)
    build.click(guarded(lambda user, s: open_study(ctx, _need(s))), pick, action, concurrency_limit=1)
    close.click(guarded(lambda user, s: close_study(ctx, _need(s))), pick, action)

    def on_export(user, study_id, chosen_format, gold_too):
        return "Exported.", export_votes(ctx, _need(study_id), chosen_format, gold_too)

    export.click(guarded(on_export, 2), [pick, fmt, with_gold], [action, files])


def _need(study_id):
    if study_id in (None, ""):
        raise ValueError("study: select a study first")
    return study_id
