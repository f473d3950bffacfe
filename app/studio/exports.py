"""Export from the Runs tab: queue the same export as `distill-studio export run:ID` for a finished student, show
where it went and the lines that load it, and zip it for download.

The archive goes under DATA_DIR/served/exports/<random>/ (the only place Gradio may serve files from, under a name no
one can guess) and only when the pipeline is at most STUDIO_MAX_ARCHIVE_MB; the studio is for researchers only, so a
rater never reaches it."""

from __future__ import annotations

import json
import secrets
import zipfile
from pathlib import Path

from app.studio.context import Studio
from app.studio.files import served_dir
from core.refs import ModelRef
from storage import repo
from storage.artifacts import resolve
from storage.db import session_scope
from storage.models import Run
from workers.submit import BrokerUnavailable

EXPORTS = "exports"  # under served/: the downloadable archives


def queue_export(ctx: Studio, user: str, run_id) -> str:
    """Queue the export of a distill run's final student; ValueError names the field (nothing queued then)."""
    if run_id in (None, ""):
        raise ValueError("run: select a finished distill run first")
    ctx.throttle(user)
    try:
        export_id = ctx.jobs.submit("export", {"model": ModelRef.run(int(run_id)).text})
    except BrokerUnavailable as exc:
        return f"Export queued, but not yet sent: {exc}"
    return f"Export run {export_id} queued for run {int(run_id)}; its folder and the lines that load it appear here."


def latest_export(ctx: Studio, run_id: int) -> Run | None:
    """The newest export run of distill run `run_id`."""
    with session_scope(ctx.factory) as session:
        for run in repo.list_runs(session=session, kind="export", limit=500):
            if run.spec.get("model") == ModelRef.run(run_id).text:
                return run
    return None


def export_text(ctx: Studio, run_id) -> str:
    """What the Runs tab says of a run's export: none yet, its progress, its failure, or its folder and loading lines."""
    if run_id in (None, ""):
        return ""
    run = latest_export(ctx, int(run_id))
    if run is None:
        return ""
    if run.status != "succeeded":
        why = f": {run.error}" if run.error else ""
        return f"Export run {run.id}: **{run.status}**{why}"
    summary = json.loads((resolve(ctx.data_dir, run.out_dir) / "export.json").read_text())
    lines = "\n".join(summary["load"])
    return (f"Export run {run.id}: **succeeded** — a diffusers pipeline in `{summary['out']}` "
            f"({_size(Path(summary['out'])) / 2**20:.1f} MB). Load it with:\n\n```python\n{lines}\n```")


def archive(ctx: Studio, run_id) -> str:
    """A zip of the run's latest succeeded export under served/exports/<random>/; ValueError when there is none or it
    is over the cap."""
    if run_id in (None, ""):
        raise ValueError("run: select a finished distill run first")
    run = latest_export(ctx, int(run_id))
    if run is None or run.status != "succeeded":
        raise ValueError(f"export: run {run_id} has no finished export; press Export first")
    folder = resolve(ctx.data_dir, run.out_dir) / "pipeline"
    size, cap = _size(folder), ctx.settings.max_archive_mb * 2**20
    if size > cap:
        raise ValueError(f"export: the pipeline is {size / 2**20:.0f} MB, over the download cap of "
                         f"{ctx.settings.max_archive_mb} MB (STUDIO_MAX_ARCHIVE_MB); copy {folder} on the server")
    target = served_dir(ctx.data_dir) / EXPORTS / secrets.token_hex(8) / f"student-run-{int(run_id)}.zip"
    target.parent.mkdir(parents=True)
    # Stored, not deflated: safetensors weights do not compress, and zipping them would cost minutes on a CPU.
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():  # only what the export wrote, never a link out of it
                zf.write(path, Path(f"student-run-{int(run_id)}") / path.relative_to(folder))
    return str(target)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
