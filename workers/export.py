"""Foreground export of a distilled student as a diffusers pipeline folder (`distill-studio export`), calling
core.export: resolve the student (run:ID or its folder), check the output folder and the teacher, load, write."""

from __future__ import annotations

from pathlib import Path

from core.export import export_student
from core.export_checks import check_exportable, teacher_folder
from core.refs import parse_ref
from storage import repo
from storage.artifacts import resolve
from storage.db import session_scope
from workers.local import check_writable, load_student, student_weights


def student_folder(model: str, data_dir: Path | None, session_factory=None, step: int | None = None) -> tuple[Path, str]:
    """(the student's folder, its reference as export.json records it) for run:ID or a folder written by `distill`."""
    ref = parse_ref(model)
    if ref.is_teacher:
        raise ValueError(f"model: {model!r} is a teacher; export takes a student: run:ID or a folder written by `distill`")
    if ref.steps is not None:
        raise ValueError(f"model: {model!r} names a step count; an export samples at the student's own step count "
                         f"(leave @{ref.steps} out)")
    if ref.kind == "folder":
        folder = ref.path.expanduser().resolve()
        return folder, str(folder)
    if session_factory is None or data_dir is None:
        raise ValueError("model: run references need the database")
    with session_scope(session_factory) as session:
        run = repo.get_run(session=session, run_id=ref.run_id)
        if run is None or run.kind != "distill":
            raise ValueError(f"model: run {ref.run_id} is not a distill run")
        if step is None and run.status != "succeeded":
            raise ValueError(f"model: run {ref.run_id} has not succeeded (status {run.status}); export one of its "
                             "checkpoints with --step N")
        return resolve(Path(data_dir), run.out_dir), ref.text


def check_out(out: Path) -> Path:
    """--out must be absent or an empty folder, and writable: checked before anything is loaded."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out: {out} is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"out: {out} is not empty; give a new or empty folder")
    return check_writable(out)


def export(model: str, out: Path, *, step: int | None = None, data_dir: Path | None = None, device: str = "cpu",
           session_factory=None, merge: bool = False) -> dict:
    """Export a student (its final model, or with `step` that checkpoint's snapshot) to the pipeline folder `out`;
    returns core.export's summary plus the training step exported."""
    created = not Path(out).expanduser().exists()
    out = check_out(out)
    try:
        folder, source = student_folder(model, data_dir, session_factory, step)
        trained, _, spec = student_weights(folder, step)
        teacher = teacher_folder(spec["teacher"], data_dir)
        check_exportable(spec, teacher)  # refuse toy2d teachers and unknown kinds before loading anything
        task, spec = load_student(folder, data_dir, device, step)
        return export_student(task, spec, teacher, out, source=source, step=trained, merge=merge)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a refused export leaves no folder behind that it made
        raise
