"""The alignment metric on `shapes`: real renders of their own captions align fully; an image drawn for another
caption, a recoloured object or an extra object is caught attribute by attribute."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from core.metrics.alignment import alignment
from core.metrics.shapes_classifier import load_classifier
from core.shapes import Scene, evaluation_scenes, render


def _images(scenes) -> torch.Tensor:
    return torch.from_numpy(np.stack([render(s) for s in scenes]).astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1


@pytest.fixture(scope="module")
def model():
    return load_classifier()


def test_renders_of_their_own_captions_align_fully(model):
    scenes = evaluation_scenes("shapes-test", 300)
    result = alignment(model, _images(scenes), [s.caption for s in scenes])
    # The classifier reads real renders at 100 % (its own test); allow one miss in 300 scenes.
    assert result.all_right >= 299 / 300 and result.attribute_share > 0.998
    assert set(result.per_attribute) == {"background", "position", "shape", "colour", "size", "empty"}
    assert alignment(model, _images(scenes), [s.caption for s in scenes], batch_size=7) == result  # read in parts


def test_wrong_images_lose_exactly_the_attributes_they_get_wrong(model):
    scene = Scene("white", (evaluation_scenes("shapes-test", 50)[0].things[0],))
    thing = scene.things[0]
    other_colour = "blue" if thing.colour != "blue" else "red"
    recoloured = Scene("white", (dataclasses.replace(thing, colour=other_colour),))
    black = Scene("black", scene.things)
    result = alignment(model, _images([recoloured, black]), [scene.caption, scene.caption])
    assert result.all_right == 0.0
    assert result.per_attribute["colour"] == 0.5 and result.per_attribute["background"] == 0.5
    assert result.per_attribute["shape"] == 1.0 and result.per_attribute["position"] == 1.0

    far = "right" if thing.position == "left" else "left"
    extra = Scene("white", (thing, dataclasses.replace(thing, position=far, size="small")))
    crowded = alignment(model, _images([extra]), [scene.caption])
    assert crowded.all_right == 0.0 and crowded.per_attribute["empty"] == 3 / 4  # one of four empty slots is taken


def test_caption_and_image_counts_must_match(model):
    with pytest.raises(ValueError, match=r"^alignment: 1 images for 2 captions$"):
        alignment(model, _images(evaluation_scenes("shapes-test", 1)), ["a", "b"])
