"""What an export needs to know before anything is loaded: whether a student of its teacher can be written as a
diffusers pipeline exactly. Torch-free, so an export job is refused before it is queued (workers/submit.py)."""

from __future__ import annotations

import json
from pathlib import Path

from core.catalogue import MANIFEST, get_teacher_info, imported_dir, pipeline_folder
from core.specs import BUILTIN_TEACHERS

SD_KINDS = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
# How each method re-noises between its steps (core/methods/*.py `sample`); a one-step student has no re-noising.
RENOISING = {"dmd2": "marginal", "mmd": "ancestral", "mmd-instant": "ancestral", "emd": "one-step",
             "diff-instruct": "one-step"}


def teacher_folder(teacher: str, data_dir: Path | None) -> Path | None:
    """The teacher's pipeline folder (imported, or the built-in shapes'); None for the other built-in teachers
    (core.export exports digits' students on its own stand-in schedule and refuses the rest)."""
    info = get_teacher_info(teacher, data_dir)
    if info.is_text_to_image:
        return pipeline_folder(info, data_dir)
    return None if info.builtin else imported_dir(data_dir) / teacher


def check_exportable(spec: dict, teacher_folder: Path | None) -> dict:
    """What the export needs to know of the teacher (its manifest: kind, prediction_type, num_classes) if a student of
    it can be exported exactly; ValueError naming `model` otherwise.

    Cheap (reads JSON only), so a caller can refuse before loading anything."""
    name = spec.get("teacher")
    if name in BUILTIN_TEACHERS and not BUILTIN_TEACHERS[name].is_text_to_image:
        info = BUILTIN_TEACHERS[name]
        if not (info.is_image and info.kind == "unet"):
            raise ValueError(f"model: a student of the built-in teacher {name!r} cannot be exported as a diffusers "
                             "pipeline: it is a 2-D point model, not an image model (students of digits and of imported "
                             "diffusers, SD and SDXL teachers export)")
        manifest = {"kind": "builtin", "prediction_type": info.prediction_type, "num_classes": info.num_classes}
    elif teacher_folder is None or not (Path(teacher_folder) / MANIFEST).is_file():
        raise ValueError(f"model: teacher {name!r} has no pipeline folder with a {MANIFEST} to export from")
    else:
        manifest = json.loads((Path(teacher_folder) / MANIFEST).read_text())
    kind = manifest.get("kind", "diffusers")
    if kind not in (*SD_KINDS, "diffusers", "builtin"):
        raise ValueError(f"model: teacher {name!r} of kind {kind!r} cannot be exported")
    if spec.get("method") not in RENOISING:
        raise ValueError(f"model: method {spec.get('method')!r} has no diffusers scheduler (known: {', '.join(RENOISING)})")
    return manifest
