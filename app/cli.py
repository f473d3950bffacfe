"""The `distill-studio` command line (typer).

Torch-free at import: commands that compute import `workers.local` inside their body, so `--help`, `list`
and the web process stay light. Every error is one line on stderr naming the problem, with exit code 2.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from contextlib import nullcontext
from pathlib import Path

import typer

from app.cli_common import Bar, cli_errors, emit, fail, jobs, submit_job
from app.cli_evaluate import evaluate_cmd, fid_cmd, leaderboard_cmd
from app.cli_export import export_cmd
from app.cli_runs import runs_app
from app.cli_study import study_app
from core.catalogue import check_distillable, check_trainable, list_teachers
from core.specs import SAMPLER_NAMES, SampleRequest, check_name
from storage.db import session_scope
from storage.settings import get_settings
from storage.urls import display_url

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Distill Studio: train and compare few-step students.")
teachers_app = typer.Typer(no_args_is_help=True, help="List, train and import teachers.")
app.add_typer(teachers_app, name="teachers")
db_app = typer.Typer(no_args_is_help=True, help="The studio database (STUDIO_DATABASE_URL).")
app.add_typer(db_app, name="db")
app.add_typer(runs_app, name="runs")
app.add_typer(study_app, name="study")
users_app = typer.Typer(no_args_is_help=True, help="Accounts: hash a password for STUDIO_USERS.")
app.add_typer(users_app, name="users")
app.command("evaluate")(evaluate_cmd)
app.command("fid")(fid_cmd)
app.command("leaderboard")(leaderboard_cmd)
app.command("export")(export_cmd)


# -- teachers ------------------------------------------------------------------------------------------------

@teachers_app.command("list")
@cli_errors
def teachers_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List built-in and imported teachers."""
    infos = list_teachers(get_settings().data_dir)
    rows = [i.to_dict() for i in infos]
    lines = [f"{i.name:16} {i.kind:9} {i.benchmark:11} {'x'.join(map(str, i.data_shape)):8} "
             f"classes={i.num_classes:<3} {i.description or i.source}" for i in infos]
    emit(as_json, rows, "\n".join(lines))


@teachers_app.command("train")
@cli_errors
def teachers_train(
    name: str = typer.Argument(..., help="A trainable built-in teacher (see `teachers list`)."),
    iterations: int = typer.Option(None, min=1, help="Training steps (default: the teacher's own)."),
    seed: int = typer.Option(None, min=0, help="Run seed (default: the teacher's own)."),
    out: Path = typer.Option(None, help="Run folder (default: DATA_DIR/teacher-runs/NAME)."),
    install: bool = typer.Option(False, help="Ship the trained weights in core/teachers/weights."),
    vae: Path = typer.Option(None, help="Text-to-image teachers: reuse this pipeline folder's autoencoder (vae/) "
                             "instead of training one, e.g. core/teachers/weights/shapes."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Train a built-in teacher with the studio's own loop (resumes an interrupted run in the same folder)."""
    check_trainable(name)  # before loading torch
    from workers.local import train_teacher

    out = out or get_settings().data_dir / "teacher-runs" / name
    bar = Bar(f"train {name}", enabled=not as_json)
    try:
        result = train_teacher(name, out, iterations=iterations, seed=seed, install=install, vae_from=vae,
                               device=get_settings().device, command=shlex.join(["distill-studio", *sys.argv[1:]]),
                               progress=bar)
    finally:
        bar.close()
    emit(as_json, result, f"{result['status']} after {result['step']} steps "
          f"({result['training']['cpu_minutes']} CPU min); model: {result['model']}"
          + (f"; installed: {result['installed']}" if result.get("installed") else ""))


@teachers_app.command("import")
@cli_errors
def teachers_import(
    path: Path = typer.Argument(..., help="A local diffusers folder: a DDPM-style UNet2DModel folder, or a "
                                "StableDiffusionPipeline / StableDiffusionXLPipeline folder (safetensors only)."),
    name: str = typer.Option(..., help="Name to register it under."),
    null_class: int = typer.Option(None, "--null-class", min=0, help="Class-conditional UNet2DModel folders: the label "
                                   "the model was trained to treat as unconditional (0 <= K < num_class_embeds)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Check a local diffusers folder end to end and register it as a teacher."""
    from workers.local import import_teacher

    check_name(name, "name")
    info = import_teacher(path, name, get_settings().data_dir, null_class)
    emit(as_json, info, import_summary(info))


def import_summary(info: dict) -> str:
    """One line about an imported teacher's manifest (text-to-image teachers: class, resolution, latents)."""
    shape = "x".join(map(str, info["data_shape"]))
    if "pipeline_class" in info:
        return (f"imported {info['name']}: {info['pipeline_class']}, {info['prediction_type']}, "
                f"{info['resolution']}x{info['resolution']} px, latents {shape}")
    null = f", null class {info['null_class']}" if info.get("null_class") is not None else ""
    return f"imported {info['name']}: {info['prediction_type']}, {shape}, classes={info['num_classes']}{null}"


# -- db ------------------------------------------------------------------------------------------------------

@db_app.command("upgrade")
@cli_errors
def db_upgrade(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Create or migrate the database to the newest schema (a no-op when it is up to date)."""
    from storage.migrate import upgrade

    result = upgrade(get_settings().database_url)
    emit(as_json, dataclasses.asdict(result), f"{result.database}: {result.before or 'empty'} -> {result.after}")


# -- sample --------------------------------------------------------------------------------------------------

@app.command("sample")
@cli_errors
def sample_cmd(
    model: str = typer.Option(..., help="teacher:NAME[@STEPS], or a student folder written by `distill`[@STEPS]."),
    n: int = typer.Option(16, min=1, max=100_000, help="Number of samples (seeds SEED .. SEED+N-1)."),
    seed: int = typer.Option(0, min=0, help="First seed."),
    steps: int = typer.Option(None, min=1, max=1000, help="Sampler steps (default: the model's @STEPS, else teachers "
                              "50 and students their own)."),
    class_id: int = typer.Option(None, "--class", min=0, help="Class to sample (class-conditional teachers)."),
    guidance: float = typer.Option(1.0, help="CFG weight w (1 = plain conditional)."),
    prompt: str = typer.Option(None, "--prompt", help="Text-to-image teachers: the prompt to sample."),
    prompts_file: Path = typer.Option(None, "--prompts", help="Text-to-image teachers: a prompt file (one prompt a "
                                      "line); N images per prompt."),
    sampler: str = typer.Option("ddim", help=f"One of {', '.join(SAMPLER_NAMES)}."),
    eta: float = typer.Option(0.0, help="DDIM eta (0 deterministic, 1 ancestral)."),
    checkpoint: int = typer.Option(None, "--checkpoint", min=0,
                                   help="A student's checkpoint step to sample (default: its final model)."),
    out: Path = typer.Option(..., help="Output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Sample a model at fixed seeds: a PNG per sample plus a labelled grid (2-D: samples.npy + scatter.png)."""
    from workers.local import default_steps, sample_model

    steps = steps or default_steps(model, checkpoint)
    request = SampleRequest(model=model, seeds=tuple(range(seed, seed + n)), steps=steps, class_id=class_id,
                            guidance=guidance, sampler=sampler, eta=eta, checkpoint=checkpoint,
                            prompts=_sample_prompts(prompt, prompts_file))
    bar = Bar("sample", enabled=not as_json)
    try:
        summary = sample_model(request, out, data_dir=get_settings().data_dir, device=get_settings().device,
                               progress=bar)
    finally:
        bar.close()
    emit(as_json, summary, f"{summary['n']} samples, NFE {summary['nfe']}, "
          f"{summary['ms_per_sample']} ms/sample -> {summary['grid']}")


def _sample_prompts(prompt: str | None, prompts_file: Path | None) -> tuple[str, ...]:
    if prompt is not None and prompts_file is not None:
        raise ValueError("prompt: give --prompt or --prompts, not both")
    if prompts_file is not None:
        from core.prompts import read_prompt_file
        return read_prompt_file(prompts_file).prompts
    return () if prompt is None else (prompt,)


# -- distill -------------------------------------------------------------------------------------------------

def _knob_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def _print_knobs(method: str, as_json: bool) -> None:
    """`distill --help-knobs METHOD`: every knob's default, accepted values, provenance and why, read from the
    config's field metadata; then the cross-field rules and the presets."""
    from core.method_specs import describe_method

    about = describe_method(method)
    lines = [f"{method} knobs (set with --set KEY=VALUE): name, default, accepted values, [provenance] why"]
    lines += [f"  {k['name']:<20} {_knob_value(k['default']):<9} {k['accepts']:<33} [{k['source']}] {k['why']}".rstrip()
              for k in about["knobs"]]
    if about["one_step_only"]:
        lines.append(f"{method} is a one-step method: student_steps must be 1")
    if about["rules"]:
        lines.append("rules: " + "; ".join(about["rules"]))
    lines.append("presets (--preset, chain with +):")
    lines += [f"  {name:<17} {note}".rstrip() for name, note in about["presets"].items()]
    emit(as_json, about, "\n".join(lines))


@app.command("distill")
@cli_errors
def distill_cmd(
    teacher: str = typer.Option(None, help="Teacher name (see `teachers list`); required."),
    method: str = typer.Option(None, help="mmd, mmd-instant, emd, diff-instruct or dmd2; required."),
    student_steps: int = typer.Option(None, "--student-steps", help="Student sampling steps (default: the preset's)."),
    iterations: int = typer.Option(2000, min=1, help="Training iterations."),
    preset: str = typer.Option("default", help="Named config preset; chain with + (e.g. toy2d, digits, digits+no-gan)."),
    set_: list[str] = typer.Option(None, "--set", help="Override a config field: KEY=VALUE (repeatable)."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Batch size (default 512 for 2-D, 64 for images)."),
    grad_accum: int = typer.Option(1, "--grad-accum", min=1, help="Split each batch into this many micro-batches "
                                   "(gradient accumulation: the same step, a fraction of the activation memory)."),
    seed: int = typer.Option(0, min=0, help="Run seed."),
    checkpoint_every: int = typer.Option(None, "--checkpoint-every", min=1,
                                         help="Steps between checkpoints (default: a quarter of the run, at most 500)."),
    prompts: Path = typer.Option(None, help="Text-to-image teachers: a prompt file, one prompt per line (data-free "
                                            "methods)."),
    data: Path = typer.Option(None, help="Text-to-image teachers: an image folder with metadata.jsonl (file_name, "
                                         "text), for the methods that train on images; its captions are the prompts."),
    init: str = typer.Option(None, metavar="RUN|DIR", help="Start from the latest checkpoint of an earlier run of the "
                             "same teacher and method (run:ID or its folder), e.g. DMD2's SD 1.5 GAN stage."),
    out: Path = typer.Option(None, help="Output folder (re-running resumes an interrupted run); not with --submit."),
    submit: bool = typer.Option(False, "--submit", help="Queue the run for a worker and print its id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    help_knobs: str = typer.Option(None, "--help-knobs", metavar="METHOD",
                                   help="List every knob of METHOD (default, bounds, provenance, why) and exit."),
):
    """Distil a teacher into a few-step student: in the foreground (progress bar, metrics.jsonl, previews), or
    queued for a worker with --submit (artifacts under DATA_DIR/runs/ID)."""
    from core.method_specs import build_method_config

    if help_knobs is not None:
        _print_knobs(help_knobs, as_json)
        return
    for name, value in (("teacher", teacher), ("method", method)):
        if value is None:
            fail(f"{name}: give --{name} (or --help-knobs METHOD to list a method's knobs)")
    info = check_distillable(teacher, get_settings().data_dir)  # the worker would refuse it too: say so before queueing
    if submit:
        if out is not None:
            fail("out: a submitted run writes to DATA_DIR/runs/ID; leave --out out")
        spec = {"teacher": teacher, "method": method, "preset": preset, "student_steps": student_steps,
                "sets": set_ or [], "iterations": iterations, "batch_size": batch_size, "grad_accum": grad_accum,
                "seed": seed,
                "checkpoint_every": checkpoint_every, "prompts": _absolute(prompts), "data": _absolute(data),
                "init": _init_ref(init)}
        submit_job("distill", spec, as_json)
        return
    if out is None:
        fail("out: give --out DIR for a foreground run (or --submit to queue it)")
    from core.text_inputs import check_text_inputs
    from workers.local import distill

    config = build_method_config(method, preset=preset, student_steps=student_steps, sets=set_ or ())  # fail fast
    check_text_inputs(info, config.needs_data, method, prompts, data)
    start = None
    if init is not None:
        from workers.submit import init_folder, init_ref

        with session_scope(jobs().factory) if init_ref(init).kind == "run" else nullcontext() as session:
            start = init_folder(_init_ref(init), get_settings().data_dir, session)
    bar = Bar(f"{method} {teacher}", enabled=not as_json)
    try:
        result = distill(teacher, method, out, preset=preset, student_steps=student_steps, sets=set_ or (),
                         iterations=iterations, batch_size=batch_size, seed=seed, data_dir=get_settings().data_dir,
                         device=get_settings().device, progress=bar, checkpoint_every=checkpoint_every,
                         prompts=prompts, data=data, init=start, grad_accum=grad_accum)
    finally:
        bar.close()
    emit(as_json, result, f"{result['status']} after {result['step']} steps ({result['cpu_minutes']} CPU min); "
          f"student: {result['out_dir']}")


def _absolute(path: Path | None) -> str | None:
    """A path as a queued spec stores it: absolute, since the worker runs elsewhere."""
    return None if path is None else str(path.expanduser().resolve())


def _init_ref(value: str | None) -> str | None:
    """--init as a spec stores it: run:ID as given, a folder made absolute."""
    from workers.submit import init_ref

    return value if value is None or init_ref(value).kind == "run" else _absolute(Path(value))


# -- jobs ----------------------------------------------------------------------------------------------------

@app.command("worker")
@cli_errors
def worker_cmd(
    concurrency: int = typer.Option(1, min=1, max=64, help="Pool processes: one per GPU."),
    loglevel: str = typer.Option("info", help="debug, info, warning or error."),
    name: str = typer.Option(None, help="Celery node name (default studio-PID@HOST)."),
):
    """Run a worker for STUDIO_BROKER_URL / STUDIO_DATABASE_URL (migrates the database first)."""
    from workers.worker import run_worker

    if loglevel not in ("debug", "info", "warning", "error"):
        fail(f"loglevel: must be debug, info, warning or error, got {loglevel!r}")
    run_worker(concurrency=concurrency, loglevel=loglevel, name=name)


# -- the studio ----------------------------------------------------------------------------------------------

@app.command("up")
@cli_errors
def up(
    host: str = typer.Option(None, help="Bind address (default STUDIO_HOST or 127.0.0.1)."),
    port: int = typer.Option(None, min=1, max=65535, help="Port (default STUDIO_PORT or 7860)."),
    no_worker: bool = typer.Option(False, "--no-worker", help="Do not start the local worker (workers run elsewhere)."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Single-user mode without accounts; localhost only."),
):
    """Serve the studio, with a local worker on the configured broker (the embedded SQLite one by default).

    Accounts come from STUDIO_USERS / STUDIO_USERS_FILE; --no-auth runs single-user on localhost."""
    import signal

    from app.local_worker import LocalWorker
    from app.studio.access import Accounts, check_single_user_host
    from app.studio.server import serve
    from storage.migrate import upgrade

    settings = get_settings()
    host = host or settings.host
    try:
        accounts = Accounts.from_settings(settings.users, settings.users_file, no_auth)
        if no_auth:
            check_single_user_host(host)
    except ValueError as exc:
        fail(str(exc))
    upgrade(settings.database_url)
    worker = None
    if not no_worker:
        worker = LocalWorker().start()
        typer.echo(f"local worker started (pid {worker.process.pid}) on "
                   f"{display_url(settings.broker_url.removeprefix('sqla+'))}", err=True)
    # SIGTERM (kill, systemd, docker stop) must reach the `finally` below like Ctrl-C, or the worker is orphaned.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        serve(settings, accounts, host=host, port=port or settings.port)
    finally:
        if worker is not None:
            worker.stop()


@users_app.command("hash")
@cli_errors
def users_hash(password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True,
                                            help="The password to hash.")):
    """Print a password hash for STUDIO_USERS / STUDIO_USERS_FILE (name:HASH:role)."""
    from app.studio.access import hash_password

    typer.echo(hash_password(password))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
