"""`distill-studio export RUN|DIR --out FOLDER`: a distilled student as a diffusers pipeline folder (registered on the
app in app/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli_common import cli_errors, emit, jobs
from core.refs import parse_ref
from storage.settings import get_settings


@cli_errors
def export_cmd(
    model: str = typer.Argument(..., metavar="RUN|DIR", help="run:ID or a student folder written by `distill`."),
    out: Path = typer.Option(..., "--out", help="The pipeline folder to write (absent or empty)."),
    step: int = typer.Option(None, "--step", min=0, help="A checkpoint step to export (default: the final model)."),
    merge: bool = typer.Option(False, "--merge", help="A LoRA student of an SD/SDXL teacher: write a full pipeline with "
                               "the adapters merged instead of LoRA weights for the teacher's pipeline."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Export a student of digits or of an imported diffusers, SD or SDXL teacher as a diffusers pipeline folder that
    runs the student's own k-step sampler, unguided: print the folder and the lines that load and call it (a LoRA
    student of an SD/SDXL teacher: its LoRA weights, loaded into the teacher's pipeline with load_lora_weights)."""
    from workers.export import export

    settings = get_settings()
    # The database only for run:ID; exporting a folder needs none.
    factory = jobs().factory if parse_ref(model).kind == "run" else None
    summary = export(model, out, step=step, data_dir=settings.data_dir, device=settings.device, session_factory=factory,
                     merge=merge)
    emit(as_json, summary, "\n".join([summary["out"], *summary["load"]]))
