"""`shapes`: procedural, captioned 32x32 RGB scenes, the text-to-image benchmark a 2-core CPU can train and judge.

A scene is a background colour and one or two objects, each a shape, a colour, a size and a position. Every scene is
a pure function of its seed; its caption comes from a small grammar and `parse_caption` reads a caption back into the
scene's attributes, so whether an image shows its prompt can be checked attribute by attribute.

Held-out compositions: the colour-shape pairs in HELD_OUT never appear in training scenes (`training_scene`); the
evaluation prompt sets draw from every pair (`evaluation_scene`), so a model's alignment on compositions it never saw
is measured apart (`holds_out`). Torch-free: images are uint8 numpy arrays [32, 32, 3].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
SUPERSAMPLE = 4  # drawn at 128 px and box-filtered down, so edges are anti-aliased the same way in every scene
SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
           "purple": (140, 60, 180), "orange": (240, 140, 30)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128)}
SIZES = {"small": 4.5, "large": 7.5}  # the shape's circumradius in pixels
POSITIONS = {"left": (8.0, 16.0), "right": (24.0, 16.0), "top": (16.0, 8.0), "bottom": (16.0, 24.0),
             "centre": (16.0, 16.0)}
PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
           "centre": "in the centre"}
# Four of the 24 colour-shape pairs, one per shape and each a different colour: never drawn in training.
HELD_OUT = frozenset({("red", "star"), ("blue", "triangle"), ("green", "circle"), ("yellow", "square")})
MARGIN = 1.0  # pixels between two objects' circumscribed circles, so neither hides part of the other


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    size: str
    position: str

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {PHRASES[self.position]}"


@dataclass(frozen=True)
class Scene:
    background: str
    things: tuple[Thing, ...]

    @property
    def caption(self) -> str:
        return " and ".join(t.phrase() for t in self.things) + f", on a {self.background} background"

    def attributes(self) -> list[tuple[str, str]]:
        """(attribute, value) pairs a correct image shows: the background, then each object's four attributes."""
        out = [("background", self.background)]
        for i, t in enumerate(self.things):
            out += [(f"object{i}.shape", t.shape), (f"object{i}.colour", t.colour), (f"object{i}.size", t.size),
                    (f"object{i}.position", t.position)]
        return out


def _apart(a: Thing, b: Thing) -> bool:
    (xa, ya), (xb, yb) = POSITIONS[a.position], POSITIONS[b.position]
    return math.hypot(xa - xb, ya - yb) >= SIZES[a.size] + SIZES[b.size] + MARGIN


def _draw_thing(rng: np.random.Generator, allowed) -> Thing:
    while True:  # rejection: at most 4 of 24 colour-shape pairs are refused, so a few draws suffice
        thing = Thing(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))), str(rng.choice(list(SIZES))),
                      str(rng.choice(list(POSITIONS))))
        if allowed(thing):
            return thing


def _scene(seed: int, allowed) -> Scene:
    rng = np.random.default_rng([seed, 0x5A4E])  # the tag keeps shapes' streams apart from any other seeded use
    background = str(rng.choice(list(BACKGROUNDS)))
    if rng.integers(2) == 0:
        return Scene(background, (_draw_thing(rng, allowed),))
    while True:  # a pair is drawn whole and redrawn until the two objects stand apart (about 1 draw in 3 does)
        pair = (_draw_thing(rng, allowed), _draw_thing(rng, allowed))
        if pair[0].position != pair[1].position and _apart(*pair):
            return Scene(background, pair)


def training_scene(seed: int) -> Scene:
    """A training scene: every colour-shape pair except the held-out ones."""
    return _scene(seed, lambda t: (t.colour, t.shape) not in HELD_OUT)


def evaluation_scene(seed: int) -> Scene:
    """An evaluation scene: any composition, held-out pairs included."""
    return _scene(seed, lambda t: True)


def holds_out(scene: Scene) -> bool:
    """Whether the scene shows a colour-shape pair no training scene has."""
    return any((t.colour, t.shape) in HELD_OUT for t in scene.things)


def _polygon(thing: Thing) -> list[tuple[float, float]]:
    cx, cy = POSITIONS[thing.position]
    r = SIZES[thing.size]
    if thing.shape == "square":
        h = r / math.sqrt(2)
        corners = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif thing.shape == "triangle":  # pointing up, centred on its circumcentre
        corners = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    else:  # a five-pointed star, inner radius 0.45 r
        corners = [((r if i % 2 == 0 else 0.45 * r) * math.cos(-math.pi / 2 + i * math.pi / 5),
                    (r if i % 2 == 0 else 0.45 * r) * math.sin(-math.pi / 2 + i * math.pi / 5)) for i in range(10)]
    return [((cx + x) * SUPERSAMPLE, (cy + y) * SUPERSAMPLE) for x, y in corners]


def render(scene: Scene) -> np.ndarray:
    """The scene as uint8 RGB [32, 32, 3]."""
    big = Image.new("RGB", (SIZE * SUPERSAMPLE,) * 2, BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(big)
    for thing in scene.things:
        fill = COLOURS[thing.colour]
        if thing.shape == "circle":
            (cx, cy), r = POSITIONS[thing.position], SIZES[thing.size] * 0.85  # a circle as heavy as the polygons
            draw.ellipse([(cx - r) * SUPERSAMPLE, (cy - r) * SUPERSAMPLE, (cx + r) * SUPERSAMPLE,
                          (cy + r) * SUPERSAMPLE], fill=fill)
        else:
            draw.polygon(_polygon(thing), fill=fill)
    return np.asarray(big.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.uint8)


_SIZE_WORDS, _SHAPE_WORDS, _COLOUR_WORDS = set(SIZES), set(SHAPES), set(COLOURS)
_PHRASE_POSITIONS = {phrase: position for position, phrase in PHRASES.items()}


def parse_caption(caption: str) -> Scene:
    """The scene a caption of this grammar describes; ValueError naming what does not parse."""
    body, sep, tail = caption.strip().rpartition(", on a ")
    if not sep or not tail.endswith(" background") or tail.removesuffix(" background") not in BACKGROUNDS:
        raise ValueError(f"caption: {caption!r} does not end with ', on a <white|black|gray> background'")
    things = []
    for part in body.split(" and "):
        words = part.split(" ", 4)
        if (len(words) != 5 or words[0] != "a" or words[1] not in _SIZE_WORDS or words[2] not in _COLOUR_WORDS
                or words[3] not in _SHAPE_WORDS or words[4] not in _PHRASE_POSITIONS):
            raise ValueError(f"caption: {part!r} is not 'a <size> <colour> <shape> <position>'")
        things.append(Thing(words[3], words[2], words[1], _PHRASE_POSITIONS[words[4]]))
    if not 1 <= len(things) <= 2:
        raise ValueError(f"caption: {caption!r} describes {len(things)} objects; scenes hold one or two")
    return Scene(tail.removesuffix(" background"), tuple(things))


EVAL_SEED_BASE = 10**12  # evaluation seeds start here, above any seed a training batch draws (below 2**31)
EVAL_SETS = ("shapes-test", "shapes-heldout")
EVAL_SIZE = 1000


def evaluation_scenes(name: str, n: int = EVAL_SIZE) -> tuple[Scene, ...]:
    """A built-in evaluation set: "shapes-test", n scenes of every composition (about a quarter show a held-out
    pair), or "shapes-heldout", n scenes that each show one; fixed by their seeds."""
    if name not in EVAL_SETS:
        raise ValueError(f"prompts: unknown shapes set {name!r} (known: {', '.join(EVAL_SETS)})")
    scenes, seed = [], EVAL_SEED_BASE + (0 if name == "shapes-test" else 10**9)
    while len(scenes) < n:
        scene = evaluation_scene(seed)
        if name == "shapes-test" or holds_out(scene):
            scenes.append(scene)
        seed += 1
    return tuple(scenes)
