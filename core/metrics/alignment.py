"""Prompt alignment on `shapes`: does an image show what its caption says, attribute by attribute?

The shapes attribute classifier (core/metrics/shapes_classifier.py) reads the image's background and, at each of the
five positions, whether an object is there and its shape, colour and size. A caption parses to its scene
(core.shapes.parse_caption). An image shows an attribute of its prompt when the classifier reads that value: the
background; for each object of the prompt, an object at its position with its shape, colour and size; and nothing at
the positions the prompt leaves empty (one attribute per position, so an extra object counts against the image).

`attribute_share`: the share of all prompt attributes shown; `all_right`: the share of images showing every one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from core.metrics.shapes_classifier import HEADS, SLOTS, ShapesClassifier, predict
from core.shapes import parse_caption


@dataclass(frozen=True)
class Alignment:
    n: int
    attribute_share: float
    all_right: float
    per_attribute: dict[str, float]  # background, empty positions, shape, colour, size, position

    def to_dict(self) -> dict:
        return {"n": self.n, "attribute_share": self.attribute_share, "all_right": self.all_right,
                "per_attribute": dict(self.per_attribute)}


def _checks(caption: str, pred: dict[str, torch.Tensor], i: int) -> list[tuple[str, bool]]:
    """(attribute kind, shown?) for every attribute the caption asks of image i."""
    scene = parse_caption(caption)
    out = [("background", HEADS["background"][int(pred["background"][i])] == scene.background)]
    taken = {t.position for t in scene.things}
    for thing in scene.things:
        j = SLOTS.index(thing.position)
        there = bool(pred["present"][i, j])
        out += [("position", there),
                ("shape", there and HEADS["shape"][int(pred["shape"][i, j])] == thing.shape),
                ("colour", there and HEADS["colour"][int(pred["colour"][i, j])] == thing.colour),
                ("size", there and HEADS["size"][int(pred["size"][i, j])] == thing.size)]
    out += [("empty", not bool(pred["present"][i, SLOTS.index(p)])) for p in SLOTS if p not in taken]
    return out


def alignment(model: ShapesClassifier, images: torch.Tensor, captions: Sequence[str],
              batch_size: int = 1024) -> Alignment:
    """Alignment of images [B,3,32,32] in [-1, 1] with the captions they were drawn for; the classifier reads
    `batch_size` images at a time (an evaluation's 100,000 would not fit in memory at once)."""
    if len(captions) != images.shape[0]:
        raise ValueError(f"alignment: {images.shape[0]} images for {len(captions)} captions")
    parts = [predict(model.eval(), images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    pred = {head: torch.cat([part[head] for part in parts]) for head in parts[0]}
    kinds: dict[str, list[bool]] = {}
    shown, every = 0, 0
    total = 0
    for i, caption in enumerate(captions):
        checks = _checks(caption, pred, i)
        for kind, ok in checks:
            kinds.setdefault(kind, []).append(ok)
        shown += sum(ok for _, ok in checks)
        total += len(checks)
        every += all(ok for _, ok in checks)
    return Alignment(len(captions), shown / total, every / len(captions),
                     {k: sum(v) / len(v) for k, v in kinds.items()})
