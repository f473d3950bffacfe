"""`distill-studio study list|export`: blind A/B studies from the command line (created on the Study tab)."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli_common import cli_errors, emit, jobs

study_app = typer.Typer(no_args_is_help=True, help="Blind A/B studies: list them, export their votes.")


@study_app.command("list")
@cli_errors
def study_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Studies, newest first, with their pool and vote counts."""
    from storage import studies
    from storage.db import session_scope

    rows = []
    with session_scope(jobs().factory) as session:
        for s in studies.list_studies(session=session):
            rows.append({"id": s.id, "name": s.name, "status": s.status, "teacher": s.teacher,
                         "variants": s.config.get("variants", []), "pairs": studies.pair_counts(session=session, study_id=s.id),
                         **studies.study_counts(session=session, study_id=s.id)})
    emit(as_json, rows, "\n".join(f"{r['id']:>4}  {r['status']:6}  {r['votes']:>6} votes  {r['raters']:>3} raters  "
                                  f"{r['name']}" for r in rows) or "no studies")


@study_app.command("export")
@cli_errors
def study_export(
    study_id: int = typer.Argument(..., help="The study's id (see `study list`)."),
    fmt: str = typer.Option("csv", "--format", help="csv or jsonl (one file per criterion)."),
    out: Path = typer.Option(Path("."), "--out", help="Folder for study-ID-quality.FMT and study-ID-alignment.FMT."),
    include_gold: bool = typer.Option(False, "--include-gold", help="Also export gold-pair votes (flagged is_gold)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Raw votes in FastChat's clean-battle shape (model_a = left, model_b = right, winner, judge, tstamp, plus
    criterion, condition_id, seed, latency_ms, is_repeat); retracted votes are never exported."""
    from app.studio.study_export import write_export

    paths = write_export(jobs().factory, study_id, out, fmt, include_gold)
    emit(as_json, {"files": [str(p) for p in paths]}, "\n".join(str(p) for p in paths))
