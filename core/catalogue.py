"""Torch-free teacher catalogue: the built-in teachers plus those imported into a data dir.

Imported teachers live in DATA_DIR/teachers/NAME/ with a `teacher.json` manifest written by the import.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.specs import BUILTIN_TEACHERS, TeacherInfo

MANIFEST = "teacher.json"
BUILTIN_WEIGHTS_DIR = Path(__file__).parent / "teachers" / "weights"  # shipped weights and pipeline folders


def imported_dir(data_dir: Path | str) -> Path:
    return Path(data_dir) / "teachers"


def pipeline_folder(info: TeacherInfo, data_dir: Path | str | None) -> Path:
    """A text-to-image teacher's StableDiffusion(XL)Pipeline folder with its teacher.json: shipped in
    core/teachers/weights/NAME for a built-in one (installed by `teachers train NAME --install`), else the import's
    copy in DATA_DIR/teachers/NAME."""
    if info.builtin:
        return BUILTIN_WEIGHTS_DIR / info.name
    return imported_dir(data_dir) / info.name


def read_manifest(folder: Path) -> TeacherInfo:
    """An imported teacher's catalogue entry; manifests written before `kind` existed are DDPM folders."""
    doc = json.loads((folder / MANIFEST).read_text())
    null_class = doc.get("null_class")
    return TeacherInfo(name=doc["name"], benchmark="imported", kind=doc.get("kind", "diffusers"),
                       data_shape=tuple(doc["data_shape"]), num_classes=int(doc.get("num_classes", 0)),
                       prediction_type=doc["prediction_type"], description=doc.get("description", ""), builtin=False,
                       source=doc.get("source", ""), null_class=None if null_class is None else int(null_class),
                       resolution=int(doc.get("resolution", 0)))


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


def trainable_teachers() -> list[str]:
    """Built-in teachers the studio can train from scratch (the others ship as exact formulas)."""
    return [name for name, info in BUILTIN_TEACHERS.items() if info.trainable]


def check_trainable(name: str, field: str = "teacher") -> TeacherInfo:
    """The built-in teacher `name` if it can be trained; ValueError naming `field` otherwise."""
    info = BUILTIN_TEACHERS.get(name)
    if info is None or not info.trainable:
        raise ValueError(f"{field}: {name!r} is not a trainable built-in teacher (trainable: {', '.join(trainable_teachers())})")
    return info


def is_distillable(info: TeacherInfo) -> bool:
    """A student copies the teacher's network at the start; an analytic teacher has none."""
    return info.kind != "analytic"


def text_to_image_refusal(name: str) -> str:
    return (f"teacher: {name!r} is a text-to-image teacher; it draws from prompts, so it loads through "
            "core.teachers.load_text_to_image_teacher")


def check_prompts_fit(info: TeacherInfo, prompts, field: str = "prompts") -> TeacherInfo:
    """A text-to-image teacher (or a student of one) needs prompts; any other teacher takes none. ValueError naming
    `field` otherwise."""
    if info.is_text_to_image and not prompts:
        raise ValueError(f"{field}: {info.name!r} is a text-to-image teacher; give one or more prompts")
    if prompts and not info.is_text_to_image:
        condition = "classes" if info.num_classes else "no condition"
        raise ValueError(f"{field}: {info.name!r} takes {condition}, not prompts; leave {field} out")
    return info


def distillable_teachers(data_dir: Path | str | None, *, text_to_image: bool = True) -> list[TeacherInfo]:
    """Teachers a student can be distilled from; `text_to_image=False` leaves out those that need prompts (the studio's
    forms and views do not take prompts yet)."""
    return [info for info in list_teachers(data_dir)
            if is_distillable(info) and (text_to_image or not info.is_text_to_image)]


def check_distillable(name: str, data_dir: Path | str | None) -> TeacherInfo:
    """The teacher `name` if a student can be distilled from it; ValueError naming `teacher` otherwise."""
    info = get_teacher_info(name, data_dir)
    if not is_distillable(info):
        raise ValueError(f"teacher: {name!r} is analytic and has no network to copy; use a network teacher "
                         f"such as {info.benchmark}")
    return info


def recipe_batch_size(info: TeacherInfo, text=None) -> int:
    """A distillation run's batch when none is given: 512 points, 64 images (digits, or shapes' own scenes), 8 for a
    text-to-image teacher on prompts or a dataset (`text`: core.text_inputs' checked inputs, None for other teachers)."""
    if not info.is_image:
        return 512
    return 64 if text is None or text.benchmark else 8
