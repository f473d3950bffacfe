"""Preview pictures of text-to-image runs: one row per prompt, its text above its seeds."""

from __future__ import annotations

import numpy as np
import pytest

from core.images import prompt_grid_image


def solid(colours: list[tuple[int, int, int]], size: int = 8) -> np.ndarray:
    return np.stack([np.full((size, size, 3), c, dtype=np.uint8) for c in colours])


def test_each_prompt_gets_a_row_of_its_seeds_under_its_text():
    colours = [(255, 0, 0), (200, 0, 0), (0, 255, 0), (0, 200, 0), (0, 0, 255), (0, 0, 200)]
    prompts = ["red"] * 2 + ["green"] * 2 + ["blue"] * 2  # one line each at this width
    scale, pad = 4, 2
    img = np.asarray(prompt_grid_image(solid(colours), prompts, scale=scale, pad=pad))
    cell = 8 * scale
    assert img.shape[1] == 2 * (cell + pad) + pad  # two seeds a row
    # Walk down the left column: every row is text (dark pixels on white) and then its two tiles.
    y = pad
    for row in range(3):
        text_band = img[y:y + 11, pad:]
        assert (text_band < 128).any(), f"row {row}: its prompt is written above it"
        y += 11
        for col in range(2):
            x = pad + col * (cell + pad)
            tile = img[y:y + cell, x:x + cell]
            assert (tile == colours[2 * row + col]).all(), f"row {row} seed {col}: the image of that prompt and seed"
        y += cell + 2 * pad
    assert img.shape[0] == y  # each row ends in two pads of white


def test_a_long_prompt_wraps_to_the_row_width_and_is_kept_whole():
    long = "a small red circle on the left and a large blue star at the top, on a white background"
    short = np.asarray(prompt_grid_image(solid([(9, 9, 9)] * 2), ["red"] * 2))
    wrapped = np.asarray(prompt_grid_image(solid([(9, 9, 9)] * 2), [long] * 2))
    assert wrapped.shape[1] == short.shape[1]
    assert (wrapped.shape[0] - short.shape[0]) % 11 == 0 and wrapped.shape[0] > short.shape[0] + 11


def test_captions_must_match_the_images():
    with pytest.raises(ValueError, match="prompts: 1 captions for 2 images"):
        prompt_grid_image(solid([(0, 0, 0)] * 2), ["one"])
