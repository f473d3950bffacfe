"""Compare tab: rows = models (the teacher at several step counts, students at a checkpoint), columns = seeds.

Every cell of one column starts from the same noise (docs/study.md#per-sample-seeded-noise). Images come from the
`images` table; missing ones are drawn by `sample` jobs, and the grid fills in as those finish (the page timer).
Point teachers (toy2d) have no per-seed images: their cell is the scatter of all the seeds, one per model."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.studio.context import Studio
from app.studio.files import placeholder, servable, text_tile
from app.studio.prompt_fields import PROMPT_SETS, parse_guidance, parse_prompts, prompt_defaults, set_prompts, takes_prompts
from core.catalogue import distillable_teachers, get_teacher_info
from core.eval_specs import guided_model
from core.refs import ModelRef, parse_ref, student_steps
from core.specs import parse_seeds
from storage import repo, views
from storage.artifacts import resolve
from storage.db import session_scope
from workers.submit import BrokerUnavailable

PAGE_CELLS = 64  # why: bigger grids make the page sluggish (docs/study.md#the-grid)
ANY_CLASS = "any (unconditional)"


@dataclass(frozen=True)
class Variant:
    """One grid row: a model reference at a step count and (students) a checkpoint step; a text-to-image teacher
    also at its guidance."""

    model: str               # teacher:NAME or run:ID (core.refs)
    steps: int
    checkpoint: int          # 0 for teachers; the training step of a student's weights
    final: bool              # a student's final weights (sampled without naming a checkpoint)
    label: str
    guidance: float = 1.0    # teachers only: classifier-free guidance w (1: none)

    @property
    def key(self) -> str:
        """The model its images are stored under: a guided teacher as teacher:NAME+cfgW (workers/jobs.run_sample)."""
        return guided_model(self.model, self.guidance)

    @property
    def nfe(self) -> int:
        """Network evaluations per image: a guided step costs two (conditional and unconditional)."""
        return self.steps * (2 if self.guidance != 1.0 else 1)

    def caption(self, seed: int | None) -> str:
        where = "" if parse_ref(self.model).is_teacher else f" · step {self.checkpoint}"
        at = "" if seed is None else f" · seed {seed}"
        guided = f" · w={self.guidance:g}" if self.guidance != 1.0 else ""
        return f"{self.label}{where}{guided}{at} · {self.nfe} NFE"

    def sample_spec(self, seeds, class_id: int | None, prompts: Sequence[str] = ()) -> dict[str, Any]:
        spec = {"model": self.model, "seeds": list(seeds), "steps": self.steps, "class_id": class_id}
        if prompts:
            spec["prompts"] = list(prompts)
        if self.guidance != 1.0:
            spec["guidance"] = self.guidance
        if not self.final:
            spec["checkpoint"] = self.checkpoint
        return spec


# -- Handlers --------------------------------------------------------------------------------------------------

def student_choices(ctx: Studio, teacher: str) -> list[tuple[str, str]]:
    """Distill runs of `teacher` that have weights to sample: succeeded, or running with a checkpoint."""
    out = []
    with session_scope(ctx.factory) as session:
        for run in repo.list_runs(session=session, kind="distill", limit=500):
            if run.spec["teacher"] != teacher or run.status not in ("succeeded", "running"):
                continue
            if not repo.checkpoint_steps(session=session, run_id=run.id):
                continue
            steps = run.spec.get("student_steps") or ""
            out.append((f"run {run.id} · {run.spec['method']}-{steps} · {run.status}", ModelRef.run(run.id).text))
    return out


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in str(text).replace(" ", "").split(",") if s]
    except ValueError:
        raise ValueError(f"teacher steps: comma-separated whole numbers, e.g. 1,4,50; got {text!r}") from None
    if not steps or any(not 1 <= s <= 1000 for s in steps):
        raise ValueError("teacher steps: one or more step counts between 1 and 1000")
    return list(dict.fromkeys(steps))


def variants(ctx: Studio, teacher: str, teacher_steps: str, students: list[str], step,
             guidance: float = 1.0) -> list[Variant]:
    """The grid's rows: the teacher at each step count (a text-to-image one at `guidance`), then each student at its
    checkpoint at or below `step` (the global slider; None or beyond the end means its final weights)."""
    rows = [Variant(ModelRef.teacher(teacher).text, s, 0, True, f"teacher {teacher}", guidance)
            for s in parse_steps(teacher_steps)]
    with session_scope(ctx.factory) as session:
        for ref in students:
            run = repo.get_run(session=session, run_id=student_run_id(ref))
            if run is None or run.kind != "distill":
                raise ValueError(f"students: {ref} is not a distill run")
            saved = repo.checkpoint_steps(session=session, run_id=run.id)
            if not saved:
                raise ValueError(f"students: run {run.id} has no weights yet")
            at = [s for s in saved if step is None or s <= int(step)] or saved[:1]
            final = run.status == "succeeded" and at[-1] == saved[-1]
            label = f"{run.spec['method']} run {run.id}"
            rows.append(Variant(ref, student_steps(run.spec), at[-1], final, label))
    return rows


def student_run_id(ref: str) -> int:
    """The run id of a chosen student (run:ID); ValueError naming `students` for anything else."""
    try:
        return parse_ref(ref).run_id
    except ValueError:
        raise ValueError(f"students: {ref!r} is not run:ID") from None


def _is_points(ctx: Studio, teacher: str) -> bool:
    return not get_teacher_info(teacher, ctx.data_dir).is_image


def matching_sample_run(session, spec: dict[str, Any], statuses=("queued", "running", "succeeded")):
    """The newest sample run with exactly this request, if any (the spec is stored normalised, so compare fields)."""
    for status in statuses:
        for run in views.sample_runs(session=session, status=status):
            if all(run.spec.get(k) == v for k, v in spec.items()) and run.spec.get("checkpoint") == spec.get("checkpoint"):
                return run
    return None


def grid(ctx: Studio, teacher: str, rows: list[Variant], seeds: list[int], class_id: int | None,
         prompts: Sequence[str] = ()) -> dict[str, Any]:
    """{cells: [(path or None, caption)] row-major, columns, missing: {row index: seeds}, pending: run ids,
    failed: why the last sample job of a row with missing cells did not deliver (Compare queues a new one)}.
    With `prompts` (text-to-image teachers) the columns are prompt x seed, prompt-major; a row's missing seeds are
    those absent for any prompt, and its sample job draws every prompt at them."""
    points = _is_points(ctx, teacher)
    cells, missing, pending, failed = [], {}, [], []
    with session_scope(ctx.factory) as session:
        for i, row in enumerate(rows):
            if points:
                spec = row.sample_spec(seeds, class_id)
                run = matching_sample_run(session, spec, statuses=("succeeded", "queued", "running", "failed",
                                                                    "cancelled"))
                path = None
                if run is not None and run.status == "succeeded":
                    scatter = resolve(ctx.data_dir, run.out_dir) / "scatter.png"
                    path = servable(ctx.data_dir, scatter) if scatter.is_file() else None
                elif run is not None and run.status in ("queued", "running"):
                    pending.append(run.id)
                if path is None and (run is None or run.status not in ("queued", "running")):  # none, failed, or gone
                    missing[i] = seeds
                    if run is not None and run.status != "succeeded":
                        failed.append(_why(row, run))
                cells.append((path, row.caption(None) + f" · {len(seeds)} seeds"))
                continue
            found = {}
            for text in prompts or [""]:
                images = repo.find_images(session=session, model=row.key, steps=row.steps, checkpoint=row.checkpoint,
                                          class_id=class_id, seeds=seeds, prompt=text)
                found[text] = {s: im for s, im in images.items() if resolve(ctx.data_dir, im.path).is_file()}  # else redraw
            absent = [s for s in seeds if any(s not in found[text] for text in found)]
            if absent:
                spec = row.sample_spec(absent, class_id, prompts)
                run = matching_sample_run(session, spec, statuses=("queued", "running", "failed", "cancelled"))
                if run is not None and run.status in ("queued", "running"):
                    pending.append(run.id)
                else:
                    missing[i] = absent
                    if run is not None:
                        failed.append(_why(row, run))
            for text in found:
                for s in seeds:
                    path = servable(ctx.data_dir, found[text][s].path) if s in found[text] else None
                    cells.append((path, row.caption(s)))
    return {"cells": cells, "columns": 1 if points else len(seeds) * max(1, len(prompts)), "missing": missing,
            "pending": pending, "failed": failed, "points": points}


def _why(row: Variant, run) -> str:
    return f"{row.caption(None)}: sample run {run.id} {run.status}" + (f": {run.error}" if run.error else "")


def request_missing(ctx: Studio, user: str, rows: list[Variant], missing: dict[int, list[int]],
                    class_id: int | None, prompts: Sequence[str] = ()) -> list[int]:
    """Queue one sample job per row with missing cells; the run ids."""
    ids = []
    for i, seeds in missing.items():
        ctx.throttle(user)
        try:
            ids.append(ctx.jobs.submit("sample", rows[i].sample_spec(seeds, class_id, prompts)))
        except BrokerUnavailable:
            pass  # the row is queued; a worker's reaper sends it once the broker is back
    return ids


def job_progress(ctx: Studio, run_ids: list[int]) -> str:
    """'run 12 queued, run 13 40%' for the sample jobs a grid waits on."""
    parts = []
    with session_scope(ctx.factory) as session:
        for run_id in run_ids:
            run = repo.get_run(session=session, run_id=run_id)
            if run is None:
                continue
            done = f"{100 * run.step // run.total}%" if run.status == "running" and run.total else run.status
            parts.append(f"sample run {run_id} {done}" + (f" ({run.error})" if run.status == "failed" else ""))
    return ", ".join(parts)


def page(cells: list, columns: int, n_rows: int, page_index: int) -> tuple[list, int, int, int]:
    """The cells of one page (whole rows, a slice of the seed columns) and (page, pages, columns on the page)."""
    per_page = max(1, PAGE_CELLS // max(1, n_rows))
    pages = max(1, -(-columns // per_page))
    page_index = min(max(0, page_index), pages - 1)
    lo, hi = page_index * per_page, min(columns, (page_index + 1) * per_page)
    out = [cells[r * columns + c] for r in range(n_rows) for c in range(lo, hi)]
    return out, page_index, pages, hi - lo


def _nfe(caption: str) -> int:
    match = re.search(r"(\d+) NFE", caption)
    return int(match[1]) if match else 0


def class_choices(ctx: Studio, teacher: str) -> list[str]:
    info = get_teacher_info(teacher, ctx.data_dir)
    return [ANY_CLASS] + [str(c) for c in range(info.num_classes)] if info.num_classes else [ANY_CLASS]


def parse_class(choice) -> int | None:
    return None if choice in (None, "", ANY_CLASS) else int(choice)


def headers(ctx: Studio, prompts: list[str], seeds: list[int]) -> list[tuple[str, str]]:
    """The header cell above every prompt x seed column: the prompt in full, and the seed."""
    return [(text_tile(ctx.data_dir, f"{p} · seed {s}"), f"{p} · seed {s}") for p in prompts for s in seeds]


def checkpoint_range(ctx: Studio, students: list[str]) -> tuple[int, int]:
    """(first, last) saved step over the chosen students, for the global step slider."""
    steps = []
    with session_scope(ctx.factory) as session:
        for ref in students:
            steps += repo.checkpoint_steps(session=session, run_id=student_run_id(ref))
    return (min(steps), max(steps)) if steps else (0, 1)


# -- Layout and wiring ----------------------------------------------------------------------------------------

def build_compare_tab(ctx: Studio, timer: gr.Timer) -> None:
    teachers = [t.name for t in distillable_teachers(ctx.data_dir)]
    default = "digits" if "digits" in teachers else (teachers[0] if teachers else None)
    state = gr.State({})  # the shown grid's request: rows, seeds, class, page

    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            teacher = gr.Dropdown(teachers, value=default, label="Teacher", elem_id="cmp-teacher")
            teacher_steps = gr.Textbox("1,4,50", label="Teacher steps", elem_id="cmp-teacher-steps",
                                       info="DDIM step counts, one row each")
            students = gr.CheckboxGroup(student_choices(ctx, default) if default else [], label="Students",
                                        elem_id="cmp-students")
            klass = gr.Dropdown(class_choices(ctx, default) if default else [ANY_CLASS], value=ANY_CLASS,
                                label="Class", elem_id="cmp-class")
            with gr.Group(visible=False, elem_id="cmp-text") as text_group:
                prompt_set = gr.Dropdown(PROMPT_SETS, value="typed", label="Prompt set",
                                         elem_id="cmp-prompt-set", info="fills Prompts with its first three; edit freely")
                prompts_box = gr.Textbox("", lines=3, label="Prompts", elem_id="cmp-prompts",
                                         info="one per line; every model draws each prompt at every seed")
                guidance = gr.Number(1.0, minimum=0, maximum=20, label="Teacher guidance", elem_id="cmp-guidance",
                                     info="classifier-free w of the teacher rows (a guided step costs 2 NFE)")
            seeds = gr.Textbox("0-7", label="Seeds", elem_id="cmp-seeds", info="e.g. 0-7 or 3,17,42; same noise per seed")
            step = gr.Slider(0, 1, value=1, step=1, label="Checkpoint step", elem_id="cmp-step",
                             info="every student row shows its checkpoint at or below this step")
            show = gr.Button("Compare", variant="primary", elem_id="cmp-show")
            refresh_students = gr.Button("Refresh students", size="sm", elem_id="cmp-refresh")
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="cmp-status")
            gallery = gr.Gallery(label="Grid", columns=8, height="auto", object_fit="contain", format="png",
                                 elem_id="cmp-grid", buttons=["download", "fullscreen"], allow_preview=True)
            with gr.Row():
                prev_page = gr.Button("◀ Previous seeds", size="sm", elem_id="cmp-prev")
                page_label = gr.Markdown(elem_id="cmp-page")
                next_page = gr.Button("Next seeds ▶", size="sm", elem_id="cmp-next")
            slider = gr.ImageSlider(label="Teacher | student", type="filepath", format="png", slider_position=50,
                                    elem_id="cmp-slider", buttons=["download", "fullscreen"])

    def on_teacher(name):
        text, first, guided = prompt_defaults(ctx, name)
        return (gr.CheckboxGroup(choices=student_choices(ctx, name), value=[]),
                gr.Dropdown(choices=class_choices(ctx, name), value=ANY_CLASS, visible=not text),
                gr.Group(visible=text), first, guided or 1.0)

    teacher.change(on_teacher, teacher, [students, klass, text_group, prompts_box, guidance])
    prompt_set.change(lambda name, choice: set_prompts(ctx, name, choice), [teacher, prompt_set], prompts_box)
    refresh_students.click(lambda name: gr.CheckboxGroup(choices=student_choices(ctx, name)), teacher, students)

    def on_students(chosen):
        lo, hi = checkpoint_range(ctx, chosen)
        return gr.Slider(minimum=lo, maximum=max(hi, lo + 1), value=hi)

    students.change(on_students, students, step)

    def render(req: dict, request: gr.Request | None, submit: bool):
        prompts = req.get("prompts") or []
        rows = variants(ctx, req["teacher"], req["teacher_steps"], req["students"], req["step"], req.get("guidance", 1.0))
        got = grid(ctx, req["teacher"], rows, req["seeds"], req["class_id"], prompts)
        queued = []
        if submit and got["missing"]:
            queued = request_missing(ctx, ctx.require_researcher(request), rows, got["missing"], req["class_id"],
                                     prompts)
        if prompts:  # every cell says its prompt too (the fullscreen view and the slider show one cell alone)
            columns = [p for p in prompts for _ in req["seeds"]] * len(rows)
            got["cells"] = [(path, f'{c} · "{p}"') for (path, c), p in zip(got["cells"], columns)]
        cells, index, pages, cols = page(got["cells"], got["columns"], len(rows), req.get("page", 0))
        top = page(headers(ctx, prompts, req["seeds"]), got["columns"], 1, index)[0] if prompts else []
        req = {**req, "page": index, "pending": bool(got["pending"] or queued), "header": len(top),
               "captions": [c for _, c in cells], "paths": [p for p, _ in cells], "cols": cols}
        waiting = job_progress(ctx, got["pending"] + queued)
        text = f"{len(rows)} models × " + (f"{len(prompts)} prompts × " if prompts else "") + f"{len(req['seeds'])} seeds"
        if waiting:
            text += f" · generating: {waiting}"
        elif got["missing"]:
            text += " · some images are missing: press Compare to generate them"
        else:
            text += " · all images ready"
        if not got["points"]:  # thumbnails cut captions short: name the rows once, in full
            text += "\n\nRows, top to bottom: " + " · ".join(f"**{i + 1}.** {row.caption(None)}" for i, row in enumerate(rows))
        if got["failed"] and not queued:
            text += "\n\n**Failed:** " + "; ".join(got["failed"])
        shown = top + [(p or placeholder(ctx.data_dir), c if p else f"{c} · pending") for p, c in cells]
        # A points grid has one scatter per model: lay the models side by side.
        columns = min(4, len(rows)) if got["points"] else cols
        return (req, text, gr.Gallery(value=shown, columns=columns), f"page {index + 1} of {pages}")

    def on_show(name, steps_text, chosen, class_choice, seeds_text, at_step, prompts_text, w, request: gr.Request):
        try:
            ctx.require_researcher(request)
            text = takes_prompts(ctx, name)
            req = {"teacher": name, "teacher_steps": steps_text, "students": list(chosen or []),
                   "class_id": None if text else parse_class(class_choice),
                   "seeds": list(parse_seeds(seeds_text, limit=ctx.settings.max_samples)),
                   "step": at_step if chosen else None, "page": 0,
                   "prompts": parse_prompts(prompts_text) if text else [], "guidance": parse_guidance(w) if text else 1.0}
            return render(req, request, submit=True)
        except (ValueError, PermissionError) as exc:
            return gr.skip(), f"**Error** — {exc}", gr.skip(), gr.skip()

    outputs = [state, status, gallery, page_label]
    show.click(on_show, [teacher, teacher_steps, students, klass, seeds, step, prompts_box, guidance], outputs,
               concurrency_limit=None)

    def on_tick(req, request: gr.Request):
        if not req or not req.get("pending"):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return render(req, request, submit=False)

    timer.tick(on_tick, state, outputs, show_progress="hidden", concurrency_limit=None)

    def turn(delta):
        def handler(req, request: gr.Request):
            if not req:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return render({**req, "page": req.get("page", 0) + delta}, request, submit=False)
        return handler

    prev_page.click(turn(-1), state, outputs)
    next_page.click(turn(+1), state, outputs)

    def on_select(req, evt: gr.SelectData):
        """Teacher | student for the chosen cell's seed: the teacher's best row against the chosen student row (or
        the chosen teacher cell against the first student row)."""
        paths, captions, cols = req.get("paths", []), req.get("captions", []), req.get("cols", 1)
        cell = (evt.index if isinstance(evt.index, int) else -1) - req.get("header", 0)  # below the prompt headers
        if not 0 <= cell < len(paths) or paths[cell] is None:
            return gr.ImageSlider()
        col = cell % cols
        column = [(paths[r * cols + col], captions[r * cols + col]) for r in range(len(paths) // cols)]
        teacher_cells = [c for c in column if c[1].startswith("teacher") and c[0]]
        student_cells = [c for c in column if not c[1].startswith("teacher") and c[0]]
        chosen = column[cell // cols]
        other = chosen if not chosen[1].startswith("teacher") else (student_cells[0] if student_cells else None)
        if not teacher_cells or other is None:
            return gr.ImageSlider(label="Teacher | student: pick a student cell")
        # Against a student, the teacher's best row: the one with the most steps.
        left = chosen if chosen[1].startswith("teacher") else max(teacher_cells, key=lambda c: _nfe(c[1]))
        return gr.ImageSlider(value=(left[0], other[0]), label=f"{left[1]}  |  {other[1]}")

    gallery.select(on_select, state, slider)
