"""Teachers tab: built-in and imported teachers, sample grids, training a built-in one, importing a diffusers folder.

Importing loads the pipeline to check it, which needs torch; the web process never imports torch, so the check runs
in a child process through the CLI (`distill-studio teachers import --json`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gradio as gr

from app.studio.compare import Variant, grid, request_missing, variants
from app.studio.context import Studio
from app.studio.files import placeholder
from core.catalogue import check_trainable, get_teacher_info, list_teachers, trainable_teachers
from core.eval_prompts import showcase_prompts
from core.prompts import prompt_problem
from core.refs import ModelRef, default_steps
from core.specs import default_guidance
from storage import repo
from storage.db import session_scope
from workers.submit import BrokerUnavailable

GRID_SEEDS = list(range(16))
PROMPT_SEEDS = 4  # a text-to-image teacher's card: each fixed prompt at this many of the grid's seeds
IMPORT_TIMEOUT_S = 300


# -- Handlers --------------------------------------------------------------------------------------------------

def shape_text(info) -> str:
    """Data shape; text-to-image teachers are shown by image size, with the latent shape the methods would see."""
    shape = "×".join(map(str, info.data_shape))
    return f"{info.resolution}×{info.resolution} px (latent {shape})" if info.is_text_to_image else shape


def teacher_rows(ctx: Studio) -> list[list]:
    return [[t.name, "built-in" if t.builtin else "imported", t.kind, t.benchmark, shape_text(t),
             t.num_classes or "", t.description or t.source] for t in list_teachers(ctx.data_dir)]


def import_roots(ctx: Studio) -> list[Path]:
    return [Path(p).expanduser().resolve() for p in ctx.settings.import_roots.split(":") if p] or \
        [(ctx.data_dir / "import").resolve()]


def check_import_path(ctx: Studio, text: str, field: str = "path", what: str = "a local diffusers folder") -> Path:
    """The folder to read, which must lie under a configured root (STUDIO_IMPORT_ROOTS): a teacher to import, or a
    run's data folder; errors name `field`."""
    if not text or not text.strip():
        raise ValueError(f"{field}: give {what}")
    path = Path(text.strip()).expanduser()
    if not path.is_absolute():
        raise ValueError(f"{field}: must be absolute, got {text!r}")
    path = path.resolve()
    roots = import_roots(ctx)
    if not any(path.is_relative_to(root) for root in roots):
        raise ValueError(f"{field}: only folders under {', '.join(map(str, roots))} can be used "
                         "(set STUDIO_IMPORT_ROOTS to allow others)")
    if not path.is_dir():
        raise ValueError(f"{field}: {str(path)!r} is not a folder")
    return path


def _null_class_args(null_class) -> list[str]:
    if null_class is None or null_class == "":
        return []
    if (isinstance(null_class, float) and not null_class.is_integer()) or int(null_class) < 0:
        raise ValueError(f"null_class: must be a whole number >= 0, got {null_class!r}")
    return ["--null-class", str(int(null_class))]


def import_teacher(ctx: Studio, path_text: str, name: str, null_class=None) -> str:
    path = check_import_path(ctx, path_text)
    if not name or not name.strip():
        raise ValueError("name: give the teacher a name")
    cmd = [sys.executable, "-m", "app.cli", "teachers", "import", str(path), "--name", name.strip(), "--json",
           *_null_class_args(null_class)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=IMPORT_TIMEOUT_S)
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["import failed"])[-1].removeprefix("error: ")
        raise ValueError(message)
    return import_message(json.loads(done.stdout))


def import_message(info: dict) -> str:
    shape = "×".join(map(str, info["data_shape"]))
    if "pipeline_class" in info:
        return f"Imported **{info['name']}**: {info['pipeline_class']}, {info['prediction_type']}, " \
               f"{info['resolution']}×{info['resolution']} px (latent {shape})."
    return f"Imported **{info['name']}**: {info['prediction_type']}, {shape}, classes {info['num_classes']}."


def _recipe(name: str) -> int | None:
    train = check_trainable(name).train
    return train.iterations if train else None


def train_teacher(ctx: Studio, user: str, name: str, iterations) -> str:
    if iterations is None or (isinstance(iterations, float) and not iterations.is_integer()):
        raise ValueError(f"iterations: must be a whole number, got {iterations!r}")
    info = check_trainable(name, field="name")
    ctx.throttle(user)
    # The recipe's own count is sent as none: for shapes a given count applies to both of its stages.
    spec = {"name": name, "iterations": None if int(iterations) == info.train.iterations else int(iterations)}
    try:
        run_id = ctx.jobs.submit("teacher", spec)
    except BrokerUnavailable as exc:
        return f"Queued, but not yet sent: {exc}"
    return f"Teacher run {run_id} queued; follow it on the Runs tab."


def sample_grid(ctx: Studio, user: str | None, name: str) -> tuple[list, str, bool]:
    """(gallery cells, status, pending) of the teacher's card at its default DDIM steps, queueing a sample job when
    missing: 16 fixed seeds, or for a text-to-image teacher 4 fixed prompts (core.eval_prompts.showcase_prompts) at 4
    seeds each, at its default guidance, one prompt a row."""
    info = get_teacher_info(name, ctx.data_dir)
    if info.kind == "analytic":
        return [], f"{name} is analytic (exact); sample it on the Compare tab's points view or the CLI.", False
    ref = ModelRef.teacher(name)
    steps = default_steps(ref)
    prompts = showcase_prompts(info) if info.is_text_to_image else []
    seeds = GRID_SEEDS[:PROMPT_SEEDS] if prompts else GRID_SEEDS
    rows = [Variant(ref.text, steps, 0, True, f"teacher {name}", default_guidance(info))]
    got = grid(ctx, name, rows, seeds, None, prompts)
    pending = _request(ctx, user, rows, got, prompts)
    captions = [f'"{p}" · seed {s}' for p in prompts for s in seeds] or [c for _, c in got["cells"]]
    cells = [(p or placeholder(ctx.data_dir), c) for (p, _), c in zip(got["cells"], captions)]
    if pending or got["missing"]:
        return cells, "generating…" if pending else "**Failed:** " + "; ".join(got["failed"]), pending
    drawn = f"{steps} DDIM steps" + (f", guidance {rows[0].guidance:g}" if rows[0].guidance != 1.0 else "")
    what = f"{len(prompts)} fixed prompts (a row each) × seeds 0-{len(seeds) - 1}" if prompts else "seeds 0-15"
    return cells, f"{name} · {drawn} · {what}", False


def try_prompt(ctx: Studio, user: str | None, name: str, prompt: str, seed) -> tuple[list, str, bool]:
    """(gallery cells, status, pending) of one typed prompt and seed drawn by the teacher (its default steps and
    guidance) and by every finished student of it, through sample jobs; errors name `prompt` or `seed`."""
    info = get_teacher_info(name, ctx.data_dir)
    if not info.is_text_to_image:
        raise ValueError(f"prompt: {name!r} takes no prompts; its card shows fixed seeds")
    text = (prompt or "").strip()
    problem = "is empty" if not text else prompt_problem(text)
    if problem:
        raise ValueError(f"prompt: {problem}")
    if seed is None or (isinstance(seed, float) and not seed.is_integer()) or not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed: a whole number >= 0, got {seed!r}")
    # The Compare tab's rows: the teacher at its default steps and guidance, every finished student at its final weights.
    rows = variants(ctx, name, str(default_steps(ModelRef.teacher(name))), finished_students(ctx, name), None,
                    default_guidance(info))
    got = grid(ctx, name, rows, [int(seed)], None, [text])
    pending = _request(ctx, user, rows, got, [text])
    cells = [(p or placeholder(ctx.data_dir), c) for p, c in got["cells"]]
    if pending or got["missing"]:
        return cells, "generating…" if pending else "**Failed:** " + "; ".join(got["failed"]), pending
    return cells, f'"{text}" · seed {int(seed)} · {len(rows)} models', False


def _request(ctx: Studio, user: str | None, rows: list[Variant], got: dict, prompts: list[str]) -> bool:
    """Queue sample jobs for a grid's missing cells when a user asks (a timer's refresh passes none, so a failed job
    is not retried every tick); whether images are still coming."""
    queued = request_missing(ctx, user, rows, got["missing"], None, prompts) if got["missing"] and user else []
    return bool(got["pending"] or queued)


def finished_students(ctx: Studio, teacher: str) -> list[str]:
    """run:ID of every succeeded distill run of `teacher`."""
    with session_scope(ctx.factory) as session:
        return [ModelRef.run(run.id).text for run in repo.list_runs(session=session, kind="distill", limit=500)
                if run.spec["teacher"] == teacher and run.status == "succeeded"]


# -- Layout and wiring ----------------------------------------------------------------------------------------

def build_teachers_tab(ctx: Studio, timer: gr.Timer) -> None:
    names = [t.name for t in list_teachers(ctx.data_dir)]
    trainable = trainable_teachers()
    pending = gr.State("")
    try_pending = gr.State(None)  # [teacher, prompt, seed] while the typed prompt's images are being drawn
    with gr.Row():
        with gr.Column(scale=3):
            table = gr.Dataframe(teacher_rows(ctx), headers=["name", "source", "kind", "data", "shape", "classes",
                                                             "description"], interactive=False, elem_id="t-table",
                                 wrap=True)
            pick = gr.Dropdown(names, value=None, label="Teacher", elem_id="t-pick")
            status = gr.Markdown(elem_id="t-status")
            gallery = gr.Gallery(label="Samples", columns=8, height="auto", format="png", elem_id="t-grid",
                                 buttons=["download", "fullscreen"])
            with gr.Group(visible=False, elem_id="t-try-box") as try_box:
                gr.Markdown("#### Try a prompt — the teacher and every finished student of it, same noise")
                with gr.Row():
                    try_prompt_text = gr.Textbox(label="Prompt", elem_id="t-try-prompt", scale=4)
                    try_seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="t-try-seed", scale=1)
                    try_button = gr.Button("Draw", elem_id="t-try", scale=1)
                try_status = gr.Markdown(elem_id="t-try-status")
                try_gallery = gr.Gallery(label="Drawn", columns=4, height="auto", format="png", elem_id="t-try-grid",
                                         buttons=["download", "fullscreen"])
        with gr.Column(scale=1, min_width=300):
            gr.Markdown("### Train a built-in teacher")
            train_name = gr.Dropdown(trainable, value=trainable[0] if trainable else None, label="Built-in teacher",
                                     elem_id="t-train-name")
            train_iters = gr.Number(_recipe(trainable[0]) if trainable else None, precision=0, label="Iterations",
                                    elem_id="t-train-iters", info="the shipped recipe's count by default")
            train = gr.Button("Train teacher", elem_id="t-train")
            train_status = gr.Markdown(elem_id="t-train-status")
            gr.Markdown("### Import a diffusers folder")
            path = gr.Textbox(label="Folder path", elem_id="t-import-path",
                              info="absolute; only under STUDIO_IMPORT_ROOTS (default DATA_DIR/import)")
            name = gr.Textbox(label="Name", elem_id="t-import-name")
            null_class = gr.Number(None, precision=0, minimum=0, label="Null class", elem_id="t-import-null",
                                   info="class-conditional UNet2DModel folders only: the label meaning 'no class'")
            do_import = gr.Button("Import", elem_id="t-import")
            import_status = gr.Markdown(elem_id="t-import-status")

    def show(teacher, request: gr.Request, submit: bool = True):
        if not teacher:
            return [], "", ""
        try:
            user = ctx.require_researcher(request)
            cells, text, waiting = sample_grid(ctx, user if submit else None, teacher)
        except (ValueError, PermissionError) as exc:
            return [], f"**Error** — {exc}", ""
        prompts = get_teacher_info(teacher, ctx.data_dir).is_text_to_image
        return gr.Gallery(value=cells, columns=PROMPT_SEEDS if prompts else 8), text, teacher if waiting else ""

    def on_pick(teacher, request: gr.Request):
        prompts = bool(teacher) and get_teacher_info(teacher, ctx.data_dir).is_text_to_image
        return (*show(teacher, request), gr.Group(visible=prompts), [], "", None)

    pick.change(on_pick, pick, [gallery, status, pending, try_box, try_gallery, try_status, try_pending])

    def tick(waiting, request: gr.Request):
        if not waiting:
            return gr.skip(), gr.skip(), gr.skip()
        return show(waiting, request, submit=False)

    timer.tick(tick, pending, [gallery, status, pending], show_progress="hidden", concurrency_limit=None)

    def draw(teacher, prompt, seed, request: gr.Request, submit: bool = True):
        try:
            user = ctx.require_researcher(request)
            cells, text, waiting = try_prompt(ctx, user if submit else None, teacher, prompt, seed)
        except (ValueError, PermissionError) as exc:
            return gr.skip(), f"**Error** — {exc}", None
        return cells, text, [teacher, prompt, seed] if waiting else None

    try_button.click(draw, [pick, try_prompt_text, try_seed], [try_gallery, try_status, try_pending])
    try_prompt_text.submit(draw, [pick, try_prompt_text, try_seed], [try_gallery, try_status, try_pending])

    def try_tick(waiting, request: gr.Request):
        if not waiting:
            return gr.skip(), gr.skip(), gr.skip()
        return draw(*waiting, request, submit=False)

    timer.tick(try_tick, try_pending, [try_gallery, try_status, try_pending], show_progress="hidden",
               concurrency_limit=None)

    train_name.change(lambda n: gr.Number(_recipe(n)), train_name, train_iters)

    def on_train(teacher, iterations, request: gr.Request):
        try:
            return train_teacher(ctx, ctx.require_researcher(request), teacher, iterations)
        except (ValueError, PermissionError) as exc:
            return f"**Error** — {exc}"

    train.click(on_train, [train_name, train_iters], train_status)

    def on_import(folder, teacher, null, request: gr.Request):
        try:
            ctx.require_researcher(request)
            message = import_teacher(ctx, folder, teacher, null)
        except (ValueError, PermissionError, subprocess.TimeoutExpired) as exc:
            return f"**Error** — {exc}", gr.skip(), gr.skip()
        all_names = [t.name for t in list_teachers(ctx.data_dir)]
        return message, teacher_rows(ctx), gr.Dropdown(choices=all_names)

    do_import.click(on_import, [path, name, null_class], [import_status, table, pick], concurrency_limit=1)
