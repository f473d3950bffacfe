"""What a text-to-image run trains on, from the New-run form: an uploaded prompt file, a data folder under the import
roots, or (the built-in shapes teacher) its own captioned scenes. The same spec fields as `distill --prompts/--data`;
core.text_inputs decides which a method needs when the spec is validated, before anything is queued."""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
from pathlib import Path

from app.studio.context import Studio
from app.studio.prompt_fields import takes_prompts
from app.studio.teachers import check_import_path
from core.catalogue import get_teacher_info
from core.prompts import read_prompt_file

PROMPTS_DIR = "prompts"  # under DATA_DIR: uploaded prompt files, named by content, which workers read
MAX_PROMPT_FILE_BYTES = 10 * 2**20  # the server's upload cap (server.MAX_UPLOAD), checked again for direct callers


def inputs_help(ctx: Studio, teacher: str | None) -> str:
    """What the form's prompt file and data folder mean for this teacher (empty for teachers without prompts)."""
    if not takes_prompts(ctx, teacher):
        return ""
    info = get_teacher_info(teacher, ctx.data_dir)
    own = ("Leave both empty to train on the benchmark's own captioned scenes (previews: the first shapes-test "
           "prompts); or give " if info.builtin else "Give ")
    return (f"**{teacher}** draws {info.resolution}×{info.resolution} px from prompts. {own}a **prompt file** (one "
            "prompt per line; EMD, Diff-Instruct, DMD2 without its GAN) or a **data folder** (images with a "
            "metadata.jsonl of file_name and text; MMD, MMD-instant, DMD2 with its GAN). Previews draw the first four "
            "prompts at two fixed seeds each, captioned.")


def keep_prompt_file(ctx: Studio, upload: str | Path) -> Path:
    """An uploaded prompt file, checked by the CLI's rules and kept under DATA_DIR/prompts named by its content (an
    upload's own path is a temporary copy a worker may never see); errors name `prompts` and the file as uploaded."""
    path = Path(upload)
    shown = path.name
    if not path.is_file():
        raise ValueError(f"prompts: the upload {shown!r} is gone; upload it again")
    if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
        raise ValueError(f"prompts: {shown} is over {MAX_PROMPT_FILE_BYTES // 2**20} MiB; a prompt file holds one "
                         "prompt per line")
    try:
        read_prompt_file(path)
    except ValueError as exc:
        raise ValueError(str(exc).replace(str(path), shown)) from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-.")[:40] or "prompts"
    target = (ctx.data_dir / PROMPTS_DIR / f"{stem}-{digest}.txt").resolve()
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{secrets.token_hex(6)}.tmp")  # concurrent uploads of one file: atomic rename
        shutil.copyfile(path, tmp)
        tmp.replace(target)
    return target


def text_fields(ctx: Studio, teacher: str, prompt_file, data_folder) -> dict[str, str | None]:
    """The spec's `prompts` and `data` for a text-to-image teacher (none for others: the form hides both fields, so a
    value left from an earlier teacher is not sent)."""
    if not takes_prompts(ctx, teacher):
        return {}
    prompts = keep_prompt_file(ctx, prompt_file) if prompt_file else None
    data = None
    if data_folder and str(data_folder).strip():
        data = check_import_path(ctx, str(data_folder), field="data", what="an image folder")
    return {"prompts": None if prompts is None else str(prompts), "data": None if data is None else str(data)}
