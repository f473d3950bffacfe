"""Blind copies of pool images (docs/study.md#blinding): random names in a directory whose name says nothing, pixels only.

Gradio's cache keeps a file's base name, so `teacher_seed42.png` would give the answer away; PNG text chunks and EXIF
could too. The pool builder copies every image it puts in a study through `blind_copy`, and the rating page may serve
nothing else (its only allowed path is `blind_dir`)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from PIL import Image

BLIND = "blind"


def blind_dir(data_dir: Path) -> Path:
    return Path(data_dir) / BLIND


def blind_copy(src_png: str | Path, data_dir: Path) -> str:
    """Re-encode the pixels of `src_png` (no text chunks, EXIF, ICC or timestamps) under a uuid4 name; the stored path
    relative to the data dir."""
    with Image.open(src_png) as image:
        mode = image.mode if image.mode in ("L", "RGB", "RGBA") else ("RGBA" if "A" in image.getbands()
                                                                        or "transparency" in image.info else "RGB")
        pixels = image.convert(mode)
        clean = Image.frombytes(mode, pixels.size, pixels.tobytes())  # a fresh image: none of the source's info
    folder = blind_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}.png"
    tmp = folder / f".{name}.tmp"
    clean.save(tmp, format="PNG")
    os.replace(tmp, folder / name)  # atomic: the page never serves half a file
    return f"{BLIND}/{name}"
