"""Turning samples into pictures: PNG per image, labelled grids, and scatter plots for 2-D data."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, PngImagePlugin


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] in [-1, 1] -> [B, H, W, C] uint8 (C = 1 squeezed to grayscale [B, H, W])."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    arr = arr.transpose(0, 2, 3, 1)
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def save_png(arr: np.ndarray, path: Path | str, scale: int = 1) -> Path:
    """Lossless PNG with no text chunks (no metadata that could identify a model)."""
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path, format="PNG", pnginfo=PngImagePlugin.PngInfo())
    return Path(path)


def grid_image(images: np.ndarray, labels: Sequence[str] | None = None, title: str | None = None,
               cols: int = 8, scale: int = 4, pad: int = 2) -> Image.Image:
    """A labelled grid of uint8 images [B, H, W(, C)], each upscaled `scale`x with nearest neighbour."""
    b, h, w = images.shape[:3]
    cols = max(1, min(cols, b))
    rows = (b + cols - 1) // cols
    cell_w, cell_h = w * scale, h * scale
    label_h = 12 if labels else 0
    title_h = 16 if title else 0
    canvas = Image.new("RGB", (cols * (cell_w + pad) + pad, title_h + rows * (cell_h + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 2), title, fill="black")
    for i in range(b):
        r, c = divmod(i, cols)
        x0, y0 = pad + c * (cell_w + pad), title_h + pad + r * (cell_h + label_h + pad)
        tile = Image.fromarray(images[i]).convert("RGB").resize((cell_w, cell_h), Image.NEAREST)
        canvas.paste(tile, (x0, y0 + label_h))
        if labels:
            draw.text((x0 + 1, y0), labels[i], fill="black")
    return canvas


def prompt_grid_image(images: np.ndarray, prompts: Sequence[str], title: str | None = None, scale: int = 4,
                      pad: int = 2) -> Image.Image:
    """One row per prompt: consecutive images with the same prompt (its seeds) side by side, the prompt written in
    full above them (wrapped to the row's width), so a preview is read without a legend."""
    if len(prompts) != len(images):
        raise ValueError(f"prompts: {len(prompts)} captions for {len(images)} images")
    rows = [(text, len(list(group))) for text, group in groupby(prompts)]
    cols = max(n for _, n in rows)
    h, w = images.shape[1:3]
    cell_w, cell_h = w * scale, h * scale
    width = cols * (cell_w + pad) + pad
    chars = max(8, (width - 2 * pad) // 6)  # PIL's default bitmap font is 6 px a character
    wrapped = [textwrap.wrap(text, chars) or [""] for text, _ in rows]
    title_h, line_h = (16 if title else 0), 11
    height = title_h + sum(len(lines) * line_h + cell_h + 2 * pad for lines in wrapped) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 2), title, fill="black")
    y, i = title_h + pad, 0
    for (_, n), lines in zip(rows, wrapped):
        for line in lines:
            draw.text((pad, y), line, fill="black")
            y += line_h
        for c in range(n):
            tile = Image.fromarray(images[i + c]).convert("RGB").resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (pad + c * (cell_w + pad), y))
        y, i = y + cell_h + 2 * pad, i + n
    return canvas


def scatter_image(points: np.ndarray, title: str | None = None, size: int = 384, extent: float | None = None,
                  reference: np.ndarray | None = None) -> Image.Image:
    """A scatter plot of 2-D points (optionally over grey reference points) as an image."""
    pts = np.asarray(points, dtype=np.float64)
    ref = None if reference is None else np.asarray(reference, dtype=np.float64)
    if extent is None:
        both = pts if ref is None else np.concatenate([pts, ref])
        extent = float(np.nanmax(np.abs(both))) * 1.1 if both.size else 1.0
        extent = extent if np.isfinite(extent) and extent > 0 else 1.0
    canvas = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(canvas)
    draw.line([(size // 2, 0), (size // 2, size)], fill=(225, 225, 225))
    draw.line([(0, size // 2), (size, size // 2)], fill=(225, 225, 225))

    def plot(p, color):
        px = (p[:, 0] / extent + 1) * 0.5 * (size - 1)
        py = (1 - (p[:, 1] / extent + 1) * 0.5) * (size - 1)
        for x, y in zip(px, py):
            if np.isfinite(x) and np.isfinite(y):
                draw.point((float(x), float(y)), fill=color)

    if ref is not None:
        plot(ref, (180, 180, 180))
    plot(pts, (20, 60, 200))
    if title:
        draw.text((4, 4), title, fill="black")
    draw.text((4, size - 14), f"[-{extent:.2f}, {extent:.2f}]^2", fill="black")
    return canvas
