"""The New-run form's knobs (app/studio/forms.py): one per config field of core/method_configs.py with the preset's
value and help text, dropdown choices and bounds read from the field's metadata, and the KEY=VALUE overrides the form
turns them back into."""

from __future__ import annotations

import pytest

from app.studio.forms import SEPARATE, help_text, knob_sets, knobs, presets
from core.knobs import SOURCES, source, why
from core.method_specs import METHOD_CONFIGS, PRESET_CHANGES, WEIGHTINGS_MMD, WEIGHTINGS_VSD, build_method_config

CASES = [(m, p) for m in METHOD_CONFIGS for p in PRESET_CHANGES[m]]
KINDS = {int: "int", float: "float", bool: "bool", str: "str"}
TAGS = tuple(f"[{s}]" for s in SOURCES)


def _fields(method: str) -> list[str]:
    return [name for name in METHOD_CONFIGS[method].model_fields if name not in SEPARATE]


@pytest.mark.parametrize("method, preset", CASES)
def test_knobs_list_every_field_but_student_steps_with_the_presets_values(method, preset):
    expected = METHOD_CONFIGS[method](**PRESET_CHANGES[method][preset])  # the preset, built without forms
    got = knobs(method, preset)
    assert [k.name for k in got] == _fields(method)
    assert "student_steps" not in {k.name for k in got}
    for knob in got:
        value = getattr(expected, knob.name)
        assert knob.value == value and type(knob.value) is type(value), knob
        assert knob.kind == KINDS[type(value)], knob
        assert knob.info == help_text(METHOD_CONFIGS[method].model_fields[knob.name])


def test_presets_change_the_knobs():
    default = {k.name: k.value for k in knobs("emd", "default")}
    toy = {k.name: k.value for k in knobs("emd", "toy2d")}
    assert (default["lr_gen"], toy["lr_gen"]) == (1e-4, 1e-3)
    assert (default["sigma_data"], toy["sigma_data"]) == (0.5, 1.42)
    composed = {k.name: k.value for k in knobs("dmd2", "digits+no-gan")}
    assert (composed["sigma_data"], composed["gan"]) == (0.64, False)
    assert presets("emd") == list(PRESET_CHANGES["emd"]) and "toy2d" in presets("emd")


def test_closed_sets_are_choices():
    mmd = {k.name: k for k in knobs("mmd", "default")}
    assert mmd["weighting"].choices == WEIGHTINGS_MMD
    assert mmd["renoise"].choices == ("conditional", "marginal")
    assert mmd["lr_schedule"].choices == ("constant", "linear")
    emd = {k.name: k for k in knobs("emd", "default")}
    assert emd["weighting"].choices == WEIGHTINGS_VSD
    assert emd["noise_cancel"].choices == ("exact", "injected", "none")
    assert emd["lr_gen"].choices == ()


@pytest.mark.parametrize("method, preset, field", [("nope", "default", "method"), ("dmd2", "nope", "preset"),
                                                   ("dmd2", "toy2d+nope", "preset")])
def test_knobs_name_a_bad_method_or_preset(method, preset, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        knobs(method, preset)


@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_every_field_has_a_provenance_and_its_help_says_it(method):
    fields = METHOD_CONFIGS[method].model_fields
    missing = [name for name, info in fields.items() if source(info) not in SOURCES]
    assert missing == [], f"fields without a provenance: {missing}"
    for name, info in fields.items():
        assert help_text(info).startswith(TAGS), f"{method}.{name}: {help_text(info)!r}"
    for knob in knobs(method, "default"):
        assert knob.info.startswith(TAGS), knob


def test_help_is_the_fields_description_and_provenance():
    dmd2, mmd = METHOD_CONFIGS["dmd2"].model_fields, METHOD_CONFIGS["mmd"].model_fields
    assert (why(dmd2["ttur_ratio"]), source(dmd2["ttur_ratio"])) == ("r = 1 unstable, r = 10 stable but slow", "paper")
    assert why(dmd2["backward_simulation"]) == "training on noised real images is worse (Table 4)"
    assert why(mmd["renoise"]).endswith('"marginal" is the ablation')
    help_ = {k.name: k.info for k in knobs("dmd2", "default")}
    assert help_["ttur_ratio"] == "[paper] r = 1 unstable, r = 10 stable but slow · an integer >= 1"  # and its bounds
    assert help_["backward_simulation"] == "[paper] training on noised real images is worse (Table 4)"
    assert help_["beta2"] == "[paper] · in [0, 1)"  # provenance without a why, still with its bounds


# -- knob_sets -----------------------------------------------------------------------------------------------

def test_unchanged_knobs_give_no_sets():
    values = {k.name: k.value for k in knobs("dmd2", "toy2d")}
    assert knob_sets("dmd2", "toy2d", values) == ()
    assert knob_sets("dmd2", "toy2d", {}) == ()


def test_floats_compare_by_value():
    assert knob_sets("emd", "toy2d", {"lr_gen": 0.001}) == ()  # the preset's 1e-3
    assert knob_sets("dmd2", "toy2d", {"lr_gen": 0.0001}) == ()  # dmd2's toy preset: 1e-4
    assert knob_sets("dmd2", "toy2d", {"lr_gen": 1e-4, "beta1": 0.9, "lr_aux": 1}) == ("lr_aux=1",)
    assert knob_sets("dmd2", "default", {"lr_gen": 1e-3}) == ("lr_gen=0.001",)
    assert knob_sets("dmd2", "default", {"t_lo": 0.05}) == ("t_lo=0.05",)


def test_whole_floats_are_accepted_for_ints():
    assert knob_sets("dmd2", "default", {"ttur_ratio": 3.0}) == ("ttur_ratio=3",)
    assert knob_sets("dmd2", "default", {"ttur_ratio": 5.0, "warmup": 500}) == ()  # the defaults


@pytest.mark.parametrize("value, rule", [(2.5, "must be a whole number, got 2.5"), (None, "a value is required"),
                                         ("  ", "a value is required")])
def test_bad_int_values_name_the_knob(value, rule):
    with pytest.raises(ValueError, match=rf"^ttur_ratio: {rule}"):
        knob_sets("dmd2", "default", {"lr_gen": 2e-4, "ttur_ratio": value})


def test_bools_render_true_or_false():
    assert knob_sets("dmd2", "default", {"gan": False, "backward_simulation": True}) == ("gan=false",)
    assert knob_sets("dmd2", "no-gan", {"gan": True}) == ("gan=true",)


def test_strings_and_separate_fields():
    assert knob_sets("mmd", "default", {"renoise": "marginal", "lr_schedule": "linear"}) == ("renoise=marginal",)
    assert knob_sets("mmd", "default", {"student_steps": 2, "unknown": 1}) == ()  # not knobs


def _changed(knob):
    """A different valid value for any knob: floats halved (or 0.25 from 0), ints + 1 as a float, bools flipped,
    strings the next choice, and the one free-text knob, lora_targets (a Textbox), one target fewer."""
    if knob.kind == "bool":
        return not knob.value
    if knob.kind == "int":
        return float(knob.value + 1)
    if knob.kind == "float":
        return knob.value / 2 if knob.value else 0.25
    if knob.name == "lora_targets":
        return ",".join(knob.value.split(",")[:-1])
    assert knob.choices, f"{knob.name}: a free-text knob; give it choices or a way to change it here"
    return knob.choices[(knob.choices.index(knob.value) + 1) % len(knob.choices)]


@pytest.mark.parametrize("method, preset", CASES)
def test_sets_round_trip_to_the_same_config(method, preset):
    fields = knobs(method, preset)
    values = {k.name: _changed(k) for k in fields}
    sets = knob_sets(method, preset, values)
    assert len(sets) == len(fields)  # every knob changed
    expected = {k.name: int(v) if k.kind == "int" else v for k, v in zip(fields, values.values(), strict=True)}
    config = build_method_config(method, preset=preset, sets=sets)
    assert config == build_method_config(method, preset=preset).replace(**expected)
    # and a form left at the preset builds the preset itself
    assert build_method_config(method, preset=preset, sets=knob_sets(method, preset, {k.name: k.value for k in fields})) \
        == build_method_config(method, preset=preset)
