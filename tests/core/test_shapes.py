"""The `shapes` scenes: a pure function of the seed, captions that parse back to exactly the scene drawn, objects drawn
where and in the colour the caption says, and held-out colour-shape pairs absent from every training scene."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.shapes import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT,
    POSITIONS,
    SIZE,
    evaluation_scene,
    holds_out,
    parse_caption,
    render,
    training_scene,
)

SEEDS = st.integers(min_value=0, max_value=2**63 - 1)


@settings(max_examples=300, deadline=None)
@given(SEEDS)
def test_a_caption_parses_back_to_the_scene_it_describes(seed):
    for scene in (training_scene(seed), evaluation_scene(seed)):
        assert parse_caption(scene.caption) == scene
        assert 1 <= len(scene.things) <= 2


@settings(max_examples=200, deadline=None)
@given(SEEDS)
def test_each_object_is_drawn_where_and_in_the_colour_its_caption_says(seed):
    scene = evaluation_scene(seed)
    image = render(scene)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == BACKGROUNDS[scene.background]  # corners stay background: objects keep a margin
    for thing in scene.things:
        x, y = POSITIONS[thing.position]
        # The pixel at the object's centre is inside every shape, small or large; box filtering leaves it exact.
        assert tuple(image[int(y), int(x)]) == COLOURS[thing.colour], thing


def test_scenes_are_a_pure_function_of_the_seed():
    for seed in (0, 1, 12345, 2**40):
        assert training_scene(seed) == training_scene(seed)
        assert np.array_equal(render(training_scene(seed)), render(training_scene(seed)))
    assert len({training_scene(s).caption for s in range(200)}) > 150


def test_held_out_pairs_never_appear_in_training_and_do_in_evaluation():
    train = [training_scene(s) for s in range(3000)]
    evaluation = [evaluation_scene(s) for s in range(3000)]
    assert not any(holds_out(s) for s in train)
    shown = {(t.colour, t.shape) for s in evaluation for t in s.things}
    assert HELD_OUT <= shown
    share = sum(holds_out(s) for s in evaluation) / len(evaluation)
    assert 0.15 < share < 0.35  # 4 of 24 pairs, one or two objects: about 1 - (5/6)^1.5 = 0.24


@pytest.mark.parametrize("caption, message", [
    ("a small red circle on the left", r"does not end with ', on a <white\|black\|gray> background'"),
    ("a tiny red circle on the left, on a white background", r"'a tiny red circle on the left' is not 'a <size>"),
    ("a small red circle on the left and a small blue star on the right and a large green square at the top, "
     "on a white background", r"describes 3 objects"),
])
def test_captions_outside_the_grammar_are_refused(caption, message):
    with pytest.raises(ValueError, match=message):
        parse_caption(caption)


def test_the_evaluation_sets_hold_a_thousand_fixed_scenes_held_out_ones_apart():
    from core.shapes import EVAL_SIZE, evaluation_scenes

    test, held = evaluation_scenes("shapes-test"), evaluation_scenes("shapes-heldout")
    assert len(test) == len(held) == EVAL_SIZE >= 1000
    assert all(holds_out(s) for s in held)
    assert 0.15 < sum(holds_out(s) for s in test) / EVAL_SIZE < 0.35
    assert evaluation_scenes("shapes-test", 10) == test[:10]  # a prefix: the same seeds
    assert len({s.caption for s in test}) > 800  # one-object scenes have 720 captions, so some repeat (as sets may)
    with pytest.raises(ValueError, match=r"^prompts: unknown shapes set 'shapes-train'"):
        evaluation_scenes("shapes-train")
