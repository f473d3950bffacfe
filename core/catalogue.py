"""Torch-free teacher catalogue: the built-in teachers plus those imported into a data dir.

Imported teachers live in DATA_DIR/teachers/NAME/ with a `teacher.json` manifest written by the import.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.specs import BUILTIN_TEACHERS, TeacherInfo

MANIFEST = "teacher.json"


def imported_dir(data_dir: Path | str) -> Path:
    return Path(data_dir) / "teachers"


def read_manifest(folder: Path) -> TeacherInfo:
    doc = json.loads((folder / MANIFEST).read_text())
    return TeacherInfo(name=doc["name"], benchmark="imported", kind="diffusers", data_shape=tuple(doc["data_shape"]),
                       num_classes=int(doc.get("num_classes", 0)), prediction_type=doc["prediction_type"],
                       description=doc.get("description", ""), builtin=False, source=doc.get("source", ""))


def list_teachers(data_dir: Path | str | None) -> list[TeacherInfo]:
    """Built-in teachers first, then imported ones by name. Unreadable manifests are skipped."""
    found = list(BUILTIN_TEACHERS.values())
    root = imported_dir(data_dir) if data_dir is not None else None
    if root is not None and root.is_dir():
        for folder in sorted(root.iterdir()):
            if (folder / MANIFEST).is_file():
                try:
                    found.append(read_manifest(folder))
                except (OSError, ValueError, KeyError):
                    continue
    return found


def get_teacher_info(name: str, data_dir: Path | str | None) -> TeacherInfo:
    for info in list_teachers(data_dir):
        if info.name == name:
            return info
    known = ", ".join(i.name for i in list_teachers(data_dir))
    raise ValueError(f"teacher: unknown name {name!r} (known: {known})")


def parse_model_ref(ref: str) -> str:
    """'teacher:NAME' -> NAME. Students join in the methods issue."""
    kind, _, name = str(ref).partition(":")
    if kind != "teacher" or not name:
        raise ValueError(f"model: {ref!r} is not a model reference (expected 'teacher:NAME')")
    return name


def native_steps(model: str) -> int:
    """A teacher's default step count (50), or the step count a student was distilled for."""
    if model.startswith("teacher:"):
        return 50
    spec_path = Path(model) / "student.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"model: {model!r} is neither teacher:NAME nor a student folder (no student.json)")
    return int(json.loads(spec_path.read_text())["config"]["student_steps"])
