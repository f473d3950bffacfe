"""`distill-studio runs list|show|cancel|resume`: the jobs in the database."""

from __future__ import annotations

import typer

from app.cli_common import cli_errors, emit, fail, jobs

runs_app = typer.Typer(no_args_is_help=True, help="Queued, running and finished jobs.")


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
            "sample": lambda: f"sample {spec['model']}", "export": lambda: f"export {spec['model']}",
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

    with session_scope(jobs().factory) as session:
        runs = repo.list_runs(session=session, status=status, limit=limit)
    emit(as_json, [_run_dict(r) for r in runs], "\n".join(_describe(r) for r in runs) or "no runs")


@runs_app.command("show")
@cli_errors
def runs_show(run_id: int = typer.Argument(..., help="Run id."),
              as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """One run: status, progress, latest metrics, error."""
    from storage import repo
    from storage.db import session_scope

    with session_scope(jobs().factory) as session:
        run = repo.get_run(session=session, run_id=run_id)
        if run is None:
            fail(f"run: no run with id {run_id}")
        data = _run_dict(run, repo.latest_metrics(session=session, run_id=run_id))
    lines = [_describe(run)] + [f"  {k}: {data[k]}" for k in ("attempts", "worker", "started_at", "finished_at",
                                                              "out_dir", "error") if data[k] is not None]
    lines += [f"  {k} = {v:.5g}" for k, v in data["metrics"].items() if v is not None]
    emit(as_json, data, "\n".join(lines))


@runs_app.command("cancel")
@cli_errors
def runs_cancel(run_id: int = typer.Argument(..., help="Run id."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Cancel a queued run, or ask a running one to stop at its next progress interval (it keeps a checkpoint)."""
    status = jobs().cancel(run_id)
    emit(as_json, {"id": run_id, "status": status, "cancel_requested": status == "running"},
          f"run {run_id}: " + ("cancelled" if status == "cancelled" else "cancel requested; it stops at its next update"))


@runs_app.command("resume")
@cli_errors
def runs_resume(run_id: int = typer.Argument(..., help="Run id."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Queue a cancelled or failed run again; it continues from its latest checkpoint."""
    jobs().resume(run_id)
    emit(as_json, {"id": run_id, "status": "queued"}, f"run {run_id}: queued")
