"""What the browser may fetch: only copies under DATA_DIR/served.

Gradio serves a returned file only from `allowed_paths`. Allowing runs/ would also expose checkpoints and weights, so
every PNG a handler shows (run previews, sample-job images) is first copied into served/ under a name derived from
its stored path, size and mtime (a rewritten file gets a new name, so no stale browser cache)."""

from __future__ import annotations

import hashlib
import secrets
import shutil
from pathlib import Path

from storage.artifacts import resolve

SERVED = "served"


def served_dir(data_dir: Path) -> Path:
    return Path(data_dir) / SERVED


def servable(data_dir: Path, stored: str | Path) -> str:
    """The path Gradio may serve for a PNG under the data dir (a stored relative path or an absolute one inside)."""
    data_dir = Path(data_dir).resolve()
    source = Path(stored).resolve() if Path(stored).is_absolute() else resolve(data_dir, str(stored))
    if not source.is_relative_to(data_dir):
        raise ValueError(f"{str(stored)!r} is outside the data dir")
    if source.suffix.lower() != ".png":
        raise ValueError(f"{source.name!r}: only PNG images are served")
    stat = source.stat()
    key = f"{source.relative_to(data_dir).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}"
    target = served_dir(data_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.png"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{secrets.token_hex(6)}.tmp")  # one per writer: handlers run concurrently
        shutil.copyfile(source, tmp)
        tmp.replace(target)  # atomic: a concurrent reader never sees half a file
    return str(target)


def placeholder(data_dir: Path) -> str:
    """A grey 'generating' tile that holds a missing cell's place, so the grid keeps its rows and columns."""
    target = served_dir(data_dir) / "pending-cell.png"
    if not target.is_file():
        from PIL import Image, ImageDraw

        target.parent.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (64, 64), (225, 225, 225))
        ImageDraw.Draw(image).text((6, 26), "pending", fill=(90, 90, 90))
        tmp = target.with_suffix(f".{secrets.token_hex(6)}.tmp")
        image.save(tmp, format="PNG")
        tmp.replace(target)
    return str(target)


def text_tile(data_dir: Path, text: str, size: int = 256) -> str:
    """A white square PNG with `text` wrapped on it in full: the header cell above a gallery column (a prompt), so it
    lines up with the images below whatever the gallery's thumbnail size."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    target = served_dir(data_dir) / f"text-{hashlib.sha256(f'{size}|{text}'.encode()).hexdigest()[:24]}.png"
    if not target.is_file():
        # Margins: the gallery lays its label over the first cell's top and each caption over a cell's bottom.
        top, bottom = size * 3 // 20, size * 3 // 16
        font_px = 22 if len(text) <= 120 else 14  # why: a CLIP-length prompt (~300 characters) still fits the square
        font = ImageFont.load_default(size=font_px)
        lines = textwrap.wrap(text, width=max(8, int(size / (0.55 * font_px)))) or [""]
        image = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(image)
        for i, line in enumerate(lines[: (size - top - bottom) // (font_px + 4)]):
            draw.text((6, top + i * (font_px + 4)), line, fill="black", font=font)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{secrets.token_hex(6)}.tmp")
        image.save(tmp, format="PNG")
        tmp.replace(target)
    return str(target)
