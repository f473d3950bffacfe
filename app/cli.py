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

from core.catalogue import list_teachers, native_steps
from core.specs import SAMPLER_NAMES, SampleRequest, check_name
from storage.db import DatabaseUnavailable
from storage.settings import SettingsError, get_settings
from storage.urls import display_url
from workers.submit import BrokerUnavailable, Jobs

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Distill Studio: train and compare few-step students.")
teachers_app = typer.Typer(no_args_is_help=True, help="List, train and import teachers.")
app.add_typer(teachers_app, name="teachers")
db_app = typer.Typer(no_args_is_help=True, help="The studio database (STUDIO_DATABASE_URL).")
app.add_typer(db_app, name="db")
runs_app = typer.Typer(no_args_is_help=True, help="Queued, running and finished jobs.")
app.add_typer(runs_app, name="runs")

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, SettingsError, DatabaseUnavailable,
               BrokerUnavailable)


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
    checkpoint_every: int = typer.Option(None, "--checkpoint-every", min=1,
                                         help="Steps between checkpoints (default: a quarter of the run, at most 500)."),
    out: Path = typer.Option(None, help="Output folder (re-running resumes an interrupted run); not with --submit."),
    submit: bool = typer.Option(False, "--submit", help="Queue the run for a worker and print its id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Distil a teacher into a few-step student: in the foreground (progress bar, metrics.jsonl, previews), or
    queued for a worker with --submit (artifacts under DATA_DIR/runs/ID)."""
    from core.method_specs import build_method_config

    if submit:
        if out is not None:
            fail("out: a submitted run writes to DATA_DIR/runs/ID; leave --out out")
        spec = {"teacher": teacher, "method": method, "preset": preset, "student_steps": student_steps,
                "sets": set_ or [], "iterations": iterations, "batch_size": batch_size, "seed": seed,
                "checkpoint_every": checkpoint_every}
        _submit("distill", spec, as_json)
        return
    if out is None:
        fail("out: give --out DIR for a foreground run (or --submit to queue it)")
    from workers.local import distill

    build_method_config(method, preset=preset, student_steps=student_steps, sets=set_ or ())  # fail fast
    bar = _Bar(f"{method} {teacher}", enabled=not as_json)
    try:
        result = distill(teacher, method, out, preset=preset, student_steps=student_steps, sets=set_ or (),
                         iterations=iterations, batch_size=batch_size, seed=seed, data_dir=get_settings().data_dir,
                         device=get_settings().device, progress=bar, checkpoint_every=checkpoint_every)
    finally:
        bar.close()
    _emit(as_json, result, f"{result['status']} after {result['step']} steps ({result['cpu_minutes']} CPU min); "
          f"student: {result['out_dir']}")


# -- evaluate, fid, leaderboard ------------------------------------------------------------------------------

# Display order of the leaderboard's columns (workers/evaluate.py stores these names); others follow by name.
METRIC_COLUMNS = ("fid", "kid", "precision", "recall", "density", "coverage", "accuracy", "modes_covered", "modes_quality",
                  "ms_per_image", "images_per_s")


@app.command("evaluate")
@cli_errors
def evaluate_cmd(
    model: list[str] = typer.Option(..., "--model", help="teacher:NAME[@STEPS] (default 50 DDIM steps), run:ID[@STEPS] "
                                    "or a student folder; repeat for several models."),
    metrics: str = typer.Option("fid,kid,precision,recall,speed", help="Comma-separated: fid, kid, precision, recall, "
                                "density, coverage, accuracy (digits), modes (toy2d), speed."),
    n: int = typer.Option(1000, help="Samples per model, seeds SEED .. SEED+N-1; at most the reference's size "
                          "(digits: 1797)."),
    seed: int = typer.Option(0, help="First seed; class-conditional models draw seed s as class s % 10."),
    extractor: str = typer.Option(None, help="Feature extractor (default: digits for digits models, toy2d for toy2d)."),
    guidance: float = typer.Option(1.0, help="CFG weight w for class-conditional teachers (w != 1 doubles the NFE)."),
    submit: bool = typer.Option(False, "--submit", help="Queue the evaluation for a worker and print its id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Measure models against cached reference statistics (FID, KID, precision/recall, accuracy, speed) and store the
    results for `leaderboard`: in the foreground (rows with no run), or queued for a worker with --submit."""
    spec = {"models": model, "metrics": metrics.split(","), "n": n, "seed": seed, "extractor": extractor,
            "guidance": guidance}
    if submit:
        _submit("evaluate", spec, as_json)
        return
    from workers.evaluate import evaluate

    factory = _jobs().factory
    bar = _Bar("evaluate", enabled=not as_json)
    try:
        result = evaluate(model, spec["metrics"], n, seed, extractor=extractor, guidance=guidance,
                          data_dir=get_settings().data_dir, device=get_settings().device, progress=bar,
                          session_factory=factory)
    finally:
        bar.close()
    lines = [f"{m['model']} @{m['steps']} (NFE {m['nfe']}"
             + (f", {m['reference']}" if m["reference"] else "") + "): "
             + ", ".join(f"{k} {v:.5g}" for k, v in m["values"].items()) for m in result["models"]]
    _emit(as_json, result, "\n".join(lines))


@app.command("fid")
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
    _emit(as_json, result, f"FID {result['fid']:.6g} ({extractor}; {result['n_a']} vs {result['n_b']} images)")


@app.command("leaderboard")
@cli_errors
def leaderboard_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Stored evaluations: one row per (model, steps) with the latest value of each metric, plus FID-vs-NFE series."""
    from storage import repo
    from storage.db import session_scope

    with session_scope(_jobs().factory) as session:
        board = repo.leaderboard(session=session)
    _emit(as_json, board, _leaderboard_table(board["rows"]))


def _leaderboard_table(rows: list[dict]) -> str:
    if not rows:
        return "no evaluations yet (run `distill-studio evaluate`)"
    found = {name for row in rows for name in row["metrics"]}
    columns = [c for c in METRIC_COLUMNS if c in found] + sorted(found - set(METRIC_COLUMNS))
    width = max(len(r["model"]) for r in rows)
    lines = [f"{'model':{width}}  steps  nfe  " + "  ".join(f"{c:>12}" for c in columns) + "  reference"]
    for r in rows:
        values = "  ".join(f"{r['metrics'][c]:>12.5g}" if c in r["metrics"] else f"{'-':>12}" for c in columns)
        lines.append(f"{r['model']:{width}}  {r['steps']:>5}  {r['nfe']:>3}  {values}  {r['reference'] or '-'}")
    return "\n".join(lines)


# -- jobs ----------------------------------------------------------------------------------------------------

def _jobs() -> Jobs:
    """Jobs on the configured database, migrated first (a no-op when up to date), as `worker` and `up` do: on a data
    dir no process has set up yet, a job command would otherwise fail with a traceback (no such table)."""
    from storage.migrate import upgrade

    upgrade(get_settings().database_url)
    return Jobs()


def _submit(kind: str, spec: dict, as_json: bool) -> None:
    run_id = _jobs().submit(kind, spec)
    _emit(as_json, {"id": run_id, "kind": kind, "status": "queued"}, str(run_id))


def _run_dict(run, metrics: dict | None = None) -> dict:
    out = {"id": run.id, "kind": run.kind, "status": run.status, "step": run.step, "total": run.total,
           "progress": round(run.step / run.total, 4) if run.total else None, "attempts": run.attempts,
           "worker": run.lease_owner, "cancel_requested": run.cancel_requested, "error": run.error,
           "out_dir": run.out_dir, "spec": run.spec,
           **{k: getattr(run, k).isoformat() if getattr(run, k) else None
              for k in ("created_at", "started_at", "heartbeat_at", "finished_at")}}
    if metrics is not None:
        out["metrics"] = metrics
    return out


def _describe(run) -> str:
    spec = run.spec
    what = {"distill": lambda: f"{spec['method']} {spec['teacher']}", "teacher": lambda: f"teacher {spec['name']}",
            "sample": lambda: f"sample {spec['model']}",
            "evaluate": lambda: f"evaluate {' '.join(spec['models'])} on {','.join(spec['metrics'])}"}.get(
        run.kind, lambda: run.kind)()
    done = f"{run.step}/{run.total}" if run.total else str(run.step)
    return f"{run.id:>5}  {run.status:9}  {done:>11}  {what}"


@runs_app.command("list")
@cli_errors
def runs_list(
    status: str = typer.Option(None, help="Only runs with this status."),
    limit: int = typer.Option(50, min=1, max=10_000, help="Newest first, at most this many."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """List runs, newest first."""
    from storage import repo
    from storage.db import session_scope

    with session_scope(_jobs().factory) as session:
        runs = repo.list_runs(session=session, status=status, limit=limit)
    _emit(as_json, [_run_dict(r) for r in runs], "\n".join(_describe(r) for r in runs) or "no runs")


@runs_app.command("show")
@cli_errors
def runs_show(run_id: int = typer.Argument(..., help="Run id."),
              as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """One run: status, progress, latest metrics, error."""
    from storage import repo
    from storage.db import session_scope

    with session_scope(_jobs().factory) as session:
        run = repo.get_run(session=session, run_id=run_id)
        if run is None:
            fail(f"run: no run with id {run_id}")
        data = _run_dict(run, repo.latest_metrics(session=session, run_id=run_id))
    lines = [_describe(run)] + [f"  {k}: {data[k]}" for k in ("attempts", "worker", "started_at", "finished_at",
                                                              "out_dir", "error") if data[k] is not None]
    lines += [f"  {k} = {v:.5g}" for k, v in data["metrics"].items() if v is not None]
    _emit(as_json, data, "\n".join(lines))


@runs_app.command("cancel")
@cli_errors
def runs_cancel(run_id: int = typer.Argument(..., help="Run id."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Cancel a queued run, or ask a running one to stop at its next progress interval (it keeps a checkpoint)."""
    status = _jobs().cancel(run_id)
    _emit(as_json, {"id": run_id, "status": status, "cancel_requested": status == "running"},
          f"run {run_id}: " + ("cancelled" if status == "cancelled" else "cancel requested; it stops at its next update"))


@runs_app.command("resume")
@cli_errors
def runs_resume(run_id: int = typer.Argument(..., help="Run id."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Queue a cancelled or failed run again; it continues from its latest checkpoint."""
    _jobs().resume(run_id)
    _emit(as_json, {"id": run_id, "status": "queued"}, f"run {run_id}: queued")


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
):
    """Serve the studio, with a local worker on the configured broker (the embedded SQLite one by default)."""
    import signal

    from app.local_worker import LocalWorker
    from app.ui import serve
    from storage.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    worker = None
    if not no_worker:
        worker = LocalWorker().start()
        typer.echo(f"local worker started (pid {worker.process.pid}) on "
                   f"{display_url(settings.broker_url.removeprefix('sqla+'))}", err=True)
    # SIGTERM (kill, systemd, docker stop) must reach the `finally` below like Ctrl-C, or the worker is orphaned.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        serve(settings, host=host or settings.host, port=port or settings.port)
    finally:
        if worker is not None:
            worker.stop()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
