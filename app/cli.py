"""The `distill-studio` command line (typer).

Torch-free at import: commands that compute import `workers.local` inside their body, so `--help`, `list`
and the web process stay light. Every error is one line on stderr naming the problem, with exit code 2.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shlex
import sys
from pathlib import Path

import typer

from core.catalogue import list_teachers
from core.specs import SAMPLER_NAMES, SampleRequest, check_name
from storage.db import DatabaseUnavailable
from storage.settings import SettingsError, get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Distill Studio: train and compare few-step students.")
teachers_app = typer.Typer(no_args_is_help=True, help="List, train and import teachers.")
app.add_typer(teachers_app, name="teachers")
db_app = typer.Typer(no_args_is_help=True, help="The studio database (STUDIO_DATABASE_URL).")
app.add_typer(db_app, name="db")

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, SettingsError, DatabaseUnavailable)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def cli_errors(fn):
    """Turn user errors into one clear line and exit code 2; anything else is a bug and keeps its traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(str(exc))
    return wrapper


def _emit(as_json: bool, data: dict | list, text: str) -> None:
    typer.echo(json.dumps(data, indent=1) if as_json else text)


class _Bar:
    """A tqdm progress bar on stderr, created on first use so quick commands print nothing."""

    def __init__(self, desc: str, enabled: bool = True):
        self.desc, self.enabled, self.bar = desc, enabled, None

    def __call__(self, done: int, total: int, metrics: dict | None = None):
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=self.desc, file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        if metrics:
            self.bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in metrics.items()
                                  if k != "step" and not k.startswith("time/")}, refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# -- teachers ------------------------------------------------------------------------------------------------

@teachers_app.command("list")
@cli_errors
def teachers_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List built-in and imported teachers."""
    infos = list_teachers(get_settings().data_dir)
    rows = [i.to_dict() for i in infos]
    lines = [f"{i.name:16} {i.kind:9} {i.benchmark:11} {'x'.join(map(str, i.data_shape)):8} "
             f"classes={i.num_classes:<3} {i.description or i.source}" for i in infos]
    _emit(as_json, rows, "\n".join(lines))


@teachers_app.command("train")
@cli_errors
def teachers_train(
    name: str = typer.Argument(..., help="A trainable built-in teacher (see `teachers list`)."),
    iterations: int = typer.Option(None, min=1, help="Training steps (default: the teacher's own)."),
    seed: int = typer.Option(None, min=0, help="Run seed (default: the teacher's own)."),
    out: Path = typer.Option(None, help="Run folder (default: DATA_DIR/teacher-runs/NAME)."),
    install: bool = typer.Option(False, help="Ship the trained weights in core/teachers/weights."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Train a built-in teacher with the studio's own loop (resumes an interrupted run in the same folder)."""
    from workers.local import train_teacher

    out = out or get_settings().data_dir / "teacher-runs" / name
    bar = _Bar(f"train {name}", enabled=not as_json)
    try:
        result = train_teacher(name, out, iterations=iterations, seed=seed, install=install,
                               device=get_settings().device, command=shlex.join(["distill-studio", *sys.argv[1:]]),
                               progress=bar)
    finally:
        bar.close()
    _emit(as_json, result, f"{result['status']} after {result['step']} steps "
          f"({result['training']['cpu_minutes']} CPU min); model: {result['model']}"
          + (f"; installed: {result['installed']}" if result.get("installed") else ""))


@teachers_app.command("import")
@cli_errors
def teachers_import(
    path: Path = typer.Argument(..., help="A local diffusers folder (UNet2DModel + scheduler config)."),
    name: str = typer.Option(..., help="Name to register it under."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Check a local diffusers DDPM-style folder and register it as a teacher."""
    from workers.local import import_teacher

    check_name(name, "name")
    info = import_teacher(path, name, get_settings().data_dir)
    _emit(as_json, info, f"imported {info['name']}: {info['prediction_type']}, "
          f"{'x'.join(map(str, info['data_shape']))}, classes={info['num_classes']}")


# -- db ------------------------------------------------------------------------------------------------------

@db_app.command("upgrade")
@cli_errors
def db_upgrade(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Create or migrate the database to the newest schema (a no-op when it is up to date)."""
    from storage.migrate import upgrade

    result = upgrade(get_settings().database_url)
    _emit(as_json, dataclasses.asdict(result), f"{result.database}: {result.before or 'empty'} -> {result.after}")


# -- sample --------------------------------------------------------------------------------------------------

@app.command("sample")
@cli_errors
def sample_cmd(
    model: str = typer.Option(..., help="teacher:NAME, or a student folder written by `distill`."),
    n: int = typer.Option(16, min=1, max=100_000, help="Number of samples (seeds SEED .. SEED+N-1)."),
    seed: int = typer.Option(0, min=0, help="First seed."),
    steps: int = typer.Option(None, min=1, max=1000, help="Sampler steps (teachers: 50; students: their own)."),
    class_id: int = typer.Option(None, "--class", min=0, help="Class to sample (class-conditional teachers)."),
    guidance: float = typer.Option(1.0, help="CFG weight w (1 = plain conditional)."),
    sampler: str = typer.Option("ddim", help=f"One of {', '.join(SAMPLER_NAMES)}."),
    eta: float = typer.Option(0.0, help="DDIM eta (0 deterministic, 1 ancestral)."),
    out: Path = typer.Option(..., help="Output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Sample a model at fixed seeds: a PNG per sample plus a labelled grid (2-D: samples.npy + scatter.png)."""
    from workers.local import sample_model

    request = SampleRequest(model=model, seeds=tuple(range(seed, seed + n)), steps=steps or native_steps(model),
                            class_id=class_id,
                            guidance=guidance, sampler=sampler, eta=eta)
    bar = _Bar("sample", enabled=not as_json)
    try:
        summary = sample_model(request, out, data_dir=get_settings().data_dir, device=get_settings().device,
                               progress=bar)
    finally:
        bar.close()
    _emit(as_json, summary, f"{summary['n']} samples, NFE {summary['nfe']}, "
          f"{summary['ms_per_sample']} ms/sample -> {summary['grid']}")


def native_steps(model: str) -> int:
    """A teacher's default step count (50), or the step count a student was distilled for."""
    if model.startswith("teacher:"):
        return 50
    spec_path = Path(model) / "student.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"model: {model!r} is neither teacher:NAME nor a student folder (no student.json)")
    return int(json.loads(spec_path.read_text())["config"]["student_steps"])


# -- distill -------------------------------------------------------------------------------------------------

@app.command("distill")
@cli_errors
def distill_cmd(
    teacher: str = typer.Option(..., help="Teacher name (see `teachers list`)."),
    method: str = typer.Option(..., help="mmd, mmd-instant, emd, diff-instruct or dmd2."),
    student_steps: int = typer.Option(None, "--student-steps", help="Student sampling steps (default: the preset's)."),
    iterations: int = typer.Option(2000, min=1, help="Training iterations."),
    preset: str = typer.Option("default", help="Named config preset; chain with + (e.g. toy2d, digits, digits+no-gan)."),
    set_: list[str] = typer.Option(None, "--set", help="Override a config field: KEY=VALUE (repeatable)."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Batch size (default 512 for 2-D, 64 for images)."),
    seed: int = typer.Option(0, min=0, help="Run seed."),
    out: Path = typer.Option(..., help="Output folder (re-running resumes an interrupted run)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Distil a teacher into a few-step student in the foreground (progress bar, metrics.jsonl, previews)."""
    from core.method_specs import build_method_config
    from workers.local import distill

    build_method_config(method, preset=preset, student_steps=student_steps, sets=set_ or ())  # fail fast
    bar = _Bar(f"{method} {teacher}", enabled=not as_json)
    try:
        result = distill(teacher, method, out, preset=preset, student_steps=student_steps, sets=set_ or (),
                         iterations=iterations, batch_size=batch_size, seed=seed, data_dir=get_settings().data_dir,
                         device=get_settings().device, progress=bar)
    finally:
        bar.close()
    _emit(as_json, result, f"{result['status']} after {result['step']} steps ({result['cpu_minutes']} CPU min); "
          f"student: {result['out_dir']}")


# -- the studio ----------------------------------------------------------------------------------------------

@app.command("up")
@cli_errors
def up(
    host: str = typer.Option(None, help="Bind address (default STUDIO_HOST or 127.0.0.1)."),
    port: int = typer.Option(None, min=1, max=65535, help="Port (default STUDIO_PORT or 7860)."),
):
    """Serve the studio."""
    from app.ui import serve

    settings = get_settings()
    serve(settings, host=host or settings.host, port=port or settings.port)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
