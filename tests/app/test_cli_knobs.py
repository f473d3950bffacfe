"""`distill-studio distill --help-knobs METHOD`: every knob of a method with its default, accepted values, provenance
and why, read from the config's field metadata; no other distill option needed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from app.cli import app
from core.method_specs import METHOD_CONFIGS, PRESET_CHANGES


def _run(*args: str):
    return CliRunner().invoke(app, ["distill", *args])


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_help_knobs_lists_every_knob_and_preset(method):
    result = _run("--help-knobs", method)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for name in METHOD_CONFIGS[method].model_fields:
        assert any(line.split()[:1] == [name] for line in lines), name
    for preset in PRESET_CHANGES[method]:
        assert any(line.split()[:1] == [preset] for line in lines), preset


def test_help_knobs_shows_default_bounds_provenance_and_why():
    lines = _run("--help-knobs", "dmd2").stdout.splitlines()
    ttur = next(line for line in lines if line.split()[0] == "ttur_ratio")
    assert ttur.split() == "ttur_ratio 5 an integer >= 1 [paper] r = 1 unstable, r = 10 stable but slow".split()
    gan = next(line for line in lines if line.split()[0] == "gan")
    assert gan.split()[1:5] == ["true", "true", "or", "false"]
    assert "rules: 0 <= t_lo < t_hi <= 1" in lines
    precision = next(line for line in lines if line.split()[0] == "precision")
    assert precision.split()[1:6] == ["fp32", "one", "of", "fp32,", "bf16"]
    emd = _run("--help-knobs", "emd").stdout
    assert "noise_cancel" in emd and "one of exact, injected, none" in emd and "emd is a one-step method" in emd


def test_help_knobs_json():
    result = _run("--help-knobs", "mmd", "--json")
    assert result.exit_code == 0, result.output
    about = json.loads(result.stdout)
    knobs = {k["name"]: k for k in about["knobs"]}
    assert list(knobs) == list(METHOD_CONFIGS["mmd"].model_fields)
    assert knobs["renoise"] == {"name": "renoise", "type": "str", "default": "conditional",
                                "accepts": "one of conditional, marginal", "choices": ["conditional", "marginal"],
                                "source": "paper",
                                "why": 'conditional re-noising beats marginal (Fig. 3); "marginal" is the ablation'}
    assert about["rules"] == ["sigma_min < sigma_max"] and "toy2d" in about["presets"]


def test_help_knobs_unknown_method_and_missing_options_are_one_line_errors():
    result = _run("--help-knobs", "nope")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr.strip() == "error: method: unknown method 'nope' (known: mmd, mmd-instant, emd, diff-instruct, dmd2)"
    result = _run("--method", "dmd2")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: teacher: give --teacher (or --help-knobs METHOD to list a method's knobs)"
