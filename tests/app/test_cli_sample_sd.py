"""`sample --prompt | --prompts` on an imported text-to-image teacher through the real CLI: PNGs at the model's pixel
resolution, a grid per prompt, NFE 2 per guided step; one-line refusals naming the field."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.app.cli_helpers import ok, one_error_line
from tests.tiny_pipelines import save_tiny_ddpm, save_tiny_sd


@pytest.fixture
def sd_tiny(cli, tmp_path):
    assert cli("teachers", "import", save_tiny_sd(tmp_path / "sd"), "--name", "sd-tiny").exit_code == 0
    return "teacher:sd-tiny"


def test_sample_a_prompt_writes_pngs_at_pixel_resolution_a_grid_and_a_summary(cli, tmp_path, sd_tiny):
    out = tmp_path / "out"
    summary = ok(cli("sample", "--model", sd_tiny, "--prompt", "a photograph of a cat", "--n", 3, "--seed", 5,
                     "--steps", 2, "--guidance", 4, "--out", out, "--json"))
    assert (summary["n"], summary["steps"], summary["guidance"], summary["nfe"]) == (3, 2, 4.0, 4)
    pngs = sorted(p.name for p in out.glob("prompt-*.png"))
    assert pngs == [f"prompt-000-seed-{s:06d}.png" for s in (5, 6, 7)]
    for name in pngs:
        assert Image.open(out / name).size == (64, 64)
    assert (out / "grid.png").is_file() and summary["grid"] == str(out / "grid.png")
    assert json.loads((out / "sample.json").read_text())["prompts"] == ["a photograph of a cat"]

    # Seed 6's image does not depend on the batch it was drawn in; unguided sampling costs 1 NFE a step. Why one
    # level: a batch of 1 and of 3 can take different CPU kernels (seen with one torch thread), whose float rounding
    # differs by ~1e-6 and may move a pixel across an 8-bit rounding boundary; another seed's noise would move
    # pixels by far more.
    alone = ok(cli("sample", "--model", sd_tiny, "--prompt", "a photograph of a cat", "--n", 1, "--seed", 6,
                   "--steps", 2, "--guidance", 4, "--out", tmp_path / "alone", "--json"))
    a = np.asarray(Image.open(tmp_path / "alone" / "prompt-000-seed-000006.png")).astype(int)
    b = np.asarray(Image.open(out / "prompt-000-seed-000006.png")).astype(int)
    c = np.asarray(Image.open(out / "prompt-000-seed-000005.png")).astype(int)
    assert np.abs(a - b).max() <= 1 < np.abs(a - c).max()
    assert alone["nfe"] == 4
    plain = ok(cli("sample", "--model", sd_tiny, "--prompt", "a dog", "--n", 1, "--steps", 2,
                   "--out", tmp_path / "plain", "--json"))
    assert plain["nfe"] == 2


def test_sample_a_prompt_file_draws_n_images_per_prompt(cli, tmp_path, sd_tiny):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\nthe dog\n")
    summary = ok(cli("sample", "--model", sd_tiny, "--prompts", prompts, "--n", 2, "--steps", 1,
                     "--out", tmp_path / "out", "--json"))
    assert (summary["prompts"], summary["images"], summary["files"]) == (["a cat", "the dog"], 4, 4)
    assert sorted(p.name for p in (tmp_path / "out").glob("grid-*.png")) == ["grid-000.png", "grid-001.png"]


def test_prompt_refusals_name_the_field(cli, tmp_path, sd_tiny):
    out = tmp_path / "out"
    assert one_error_line(cli("sample", "--model", sd_tiny, "--n", 1, "--out", out)) == \
        "error: prompt: 'sd-tiny' is a text-to-image teacher; give --prompt TEXT or --prompts FILE"
    assert one_error_line(cli("sample", "--model", sd_tiny, "--prompt", "a", "--prompts", tmp_path / "p.txt",
                              "--out", out)) == "error: prompt: give --prompt or --prompts, not both"
    assert one_error_line(cli("sample", "--model", sd_tiny, "--prompts", tmp_path / "missing.txt", "--out", out)) \
        .startswith("error: prompts: ")
    assert one_error_line(cli("sample", "--model", "teacher:digits", "--prompt", "a cat", "--out", out)) == \
        "error: prompt: 'digits' is not a text-to-image teacher; leave --prompt/--prompts out"
    assert cli("teachers", "import", save_tiny_ddpm(tmp_path / "ddpm"), "--name", "ddpm").exit_code == 0
    assert one_error_line(cli("sample", "--model", "teacher:ddpm", "--prompt", "a cat", "--out", out)) == \
        "error: prompt: 'ddpm' is not a text-to-image teacher; leave --prompt/--prompts out"
    assert not out.exists()
