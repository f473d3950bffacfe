"""Method configs and presets: each knob's metadata (provenance, why, bounds) is what validation enforces, errors
are one plain line naming the field, every named preset builds, presets chain with "+" left to right, and each config
says what its method needs."""

import math

import pytest

from core.knobs import SOURCES, bounds, kind, rule, source
from core.method_specs import (
    METHOD_CONFIGS,
    PRESET_CHANGES,
    PRESET_NOTES,
    PRESETS,
    DMD2Config,
    EMDConfig,
    MMDConfig,
    build_method_config,
    check_teacher_data,
    describe_method,
    preset_changes,
)
from core.specs import TrainConfig

CONFIGS = [*METHOD_CONFIGS.values(), TrainConfig]


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_every_preset_builds_and_differs_from_default_only_where_it_says(method):
    default = METHOD_CONFIGS[method]()
    for name, config in PRESETS[method].items():
        changed = {k for k, v in config.to_dict().items() if v != default.to_dict()[k]}
        assert changed == {k for k, v in PRESET_CHANGES[method][name].items() if v != default.to_dict()[k]}, name
        assert build_method_config(method, preset=name) == config


def test_chained_presets_apply_left_to_right_and_sets_win():
    cfg = build_method_config("dmd2", preset="digits+no-gan")
    assert (cfg.sigma_data, cfg.gan, cfg.ttur_ratio) == (0.64, False, 5)
    cfg = build_method_config("mmd", preset="toy2d+2-step+marginal-renoise")
    assert (cfg.sigma_data, cfg.lr_gen, cfg.student_steps, cfg.renoise) == (1.42, 1e-4, 2, "marginal")
    # A later preset overrides an earlier one; --set and --student-steps override both.
    assert build_method_config("dmd2", preset="paper+toy2d").lr_gen == 1e-4
    assert build_method_config("dmd2", preset="toy2d+paper").lr_gen == 2e-6
    cfg = build_method_config("dmd2", preset="toy2d+4-step", student_steps=2, sets=["lr_gen=5e-4"])
    assert (cfg.student_steps, cfg.lr_gen) == (2, 5e-4)


def test_benchmark_presets_drop_fields_the_method_lacks():
    assert "lr_aux" not in preset_changes("mmd-instant", "toy2d")
    assert build_method_config("mmd-instant", preset="toy2d").lr_gen == 3e-4


def test_mmd_instant_one_step_toy_preset_keeps_the_higher_learning_rate():
    """Its 1-step student must travel from the collapsed one-step prediction to the ring (core/method_specs.py)."""
    cfg = build_method_config("mmd-instant", preset="toy2d-1step")
    assert (cfg.student_steps, cfg.lr_gen, cfg.sigma_data, cfg.weighting) == (1, 1e-3, 1.42, "unit")


@pytest.mark.parametrize(("method", "lr"), [("mmd", 1e-4), ("mmd-instant", 3e-4), ("emd", 1e-3),
                                              ("diff-instruct", 1e-3), ("dmd2", 1e-4)])
def test_toy2d_learning_rates(method, lr):
    """The ring's data std everywhere; lr 1e-3, except the tiny-CPU default 1e-4 for dmd2 and mmd and 3e-4 for
    mmd-instant, whose multistep students drift from the ring at 1e-3 (docs/methods.md#outcome-tests,
    tests/core/methods/test_outcomes.py); both MMD variants weight noise levels equally."""
    cfg = build_method_config(method, preset="toy2d")
    assert (cfg.sigma_data, cfg.lr_gen, getattr(cfg, "lr_aux", lr)) == (1.42, lr, lr)
    if method.startswith("mmd"):
        assert cfg.weighting == "unit"


@pytest.mark.parametrize("preset", ["nope", "digits+nope", "digits+", "no-gan"])
def test_unknown_preset_names_the_field_and_the_known_names(preset):
    method = "emd" if preset == "no-gan" else "dmd2"
    with pytest.raises(ValueError, match=r"^preset: unknown preset .*known: default, toy2d, digits"):
        build_method_config(method, preset=preset)


def test_paper_presets_carry_the_published_settings():
    sdxl = build_method_config("dmd2", preset="sdxl-1step")
    assert (sdxl.lr_gen, sdxl.guidance, sdxl.gan_weight_gen, round(sdxl.one_step_t * 999)) == (5e-7, 8.0, 5e-3, 399)
    assert build_method_config("dmd2", preset="sdxl-4step").student_steps == 4
    assert build_method_config("emd", preset="paper").langevin_steps == 16
    for method in METHOD_CONFIGS:
        assert build_method_config(method, preset="paper").lr_gen == 2e-6


# -- The knob metadata is the validation ----------------------------------------------------------------------

def _outside(b: dict) -> list:
    """Values just outside each bound of a field."""
    out = [b["gt"], b["gt"] - 1] if "gt" in b else []
    out += [b["ge"] - 1] if "ge" in b else []
    out += [b["lt"], b["lt"] + 1] if "lt" in b else []
    out += [b["le"] + 1] if "le" in b else []
    return out


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.key)
def test_every_bound_in_the_metadata_is_enforced_with_the_fields_rule(cls):
    checked = 0
    for name, info in cls.model_fields.items():
        b = bounds(info)
        for value in _outside(b):
            with pytest.raises(ValueError, match=rf"^{cls.key}: {name} ") as exc:
                cls(**{name: value})
            assert type(exc.value) is ValueError  # not pydantic's multi-line ValidationError
            assert str(exc.value) == f"{cls.key}: {name} {rule(info)}, got {value!r}"
            checked += 1
        if "min_length" in b:
            with pytest.raises(ValueError, match=rf"^{cls.key}: {name} must not be empty"):
                cls(**{name: ()})
            checked += 1
    assert checked > 5


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.key)
def test_types_are_strict(cls):
    """A bool is not a number, 2.0 is not an integer, a number is not a string (as the form and --set need)."""
    for name, info in cls.model_fields.items():
        wrong = {"int": [True, 2.0, "2"], "float": [True, "0.5"], "bool": [1, "yes"], "str": [1]}.get(kind(info), [])
        for value in wrong:
            with pytest.raises(ValueError, match=rf"^{cls.key}: {name} must "):
                cls(**{name: value})


@pytest.mark.parametrize(("cls", "changes", "message"), [
    (DMD2Config, {"ttur_ratio": 0}, "dmd2: ttur_ratio must be an integer >= 1, got 0"),
    (DMD2Config, {"one_step_t": 0.0}, "dmd2: one_step_t must be in (0, 1], got 0.0"),
    (DMD2Config, {"t_lo": 0.9, "t_hi": 0.1}, "dmd2: t_lo and t_hi must satisfy 0 <= t_lo < t_hi <= 1, got 0.9, 0.1"),
    (MMDConfig, {"sigma_min": 100.0}, "mmd: sigma_min must be < sigma_max (80.0), got 100.0"),
    (MMDConfig, {"weighting": "dmd"}, "mmd: weighting must be one of auto, edm, unit, adaptive, got 'dmd'"),
    (MMDConfig, {"beta2": 1.0}, "mmd: beta2 must be in [0, 1), got 1.0"),
    (EMDConfig, {"gamma_eps": 0.0}, "emd: gamma_eps must be > 0, got 0.0"),
    (EMDConfig, {"gamma_eps": 1.5}, "emd: gamma_eps must be in (0, 1], got 1.5"),
    (EMDConfig, {"langevin_steps": 2.0}, "emd: langevin_steps must be an integer >= 1, got 2.0"),
    (TrainConfig, {"lr": 0}, "train: lr must be > 0, got 0"),
    (TrainConfig, {"ema_decay": 1.0}, "train: ema_decay must be in [0, 1), got 1.0"),
    (TrainConfig, {"iterations": 0}, "train: iterations must be an integer >= 1, got 0"),
])
def test_error_messages_name_the_config_and_the_field(cls, changes, message):
    with pytest.raises(ValueError) as exc:
        cls(**changes)
    assert (type(exc.value), str(exc.value)) == (ValueError, message)


def test_nan_is_refused_where_a_bound_applies():
    with pytest.raises(ValueError, match=r"^mmd: lr_aux must be > 0, got nan$"):
        MMDConfig(lr_aux=math.nan)


def test_unknown_fields_are_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"^dmd2: unknown field\(s\) nope \(known: adam_eps, backward_simulation, "):
        DMD2Config.from_dict({"nope": 1})
    with pytest.raises(ValueError, match=r"^dmd2: unknown field\(s\) nope \(known: "):
        DMD2Config(nope=1)
    with pytest.raises(ValueError, match=r"^train: unknown field\(s\) nope$"):
        TrainConfig.from_dict({"nope": 1})


def test_every_method_has_the_loops_precision_knobs_and_stored_dmd2_configs_still_load():
    for cls in METHOD_CONFIGS.values():
        assert {"precision", "gradient_checkpointing"} <= set(cls.model_fields), cls.key
    # DMD2 configs stored before the loop read precision carry "fp32", which is the default.
    assert DMD2Config.from_dict({**DMD2Config().to_dict(), "precision": "fp32"}) == DMD2Config()


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.key)
def test_configs_are_frozen_hashable_and_round_trip(cls):
    config = cls()
    assert cls.from_dict(config.to_dict()) == config and hash(cls.from_dict(config.to_dict())) == hash(config)
    # an integer knob: every method's student_steps (its shared knobs come first), TrainConfig's first
    first = "student_steps" if "student_steps" in cls.model_fields else next(iter(cls.model_fields))
    with pytest.raises(ValueError, match="frozen"):
        setattr(config, first, getattr(config, first))
    changed = config.replace(**{first: getattr(config, first) + 1})
    assert changed != config and getattr(changed, first) == getattr(config, first) + 1
    with pytest.raises(ValueError, match=rf"^{cls.key}: {first} "):
        config.replace(**{first: -1})


def test_train_config_reads_json_lists_as_tuples():
    config = TrainConfig(preview_seeds=[3, 4])
    assert config.preview_seeds == (3, 4) and config.to_dict()["preview_seeds"] == [3, 4]
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_describe_method_lists_every_knob_with_its_metadata(method):
    about = describe_method(method)
    assert [k["name"] for k in about["knobs"]] == list(METHOD_CONFIGS[method].model_fields)
    assert all(k["source"] in SOURCES for k in about["knobs"])
    assert list(about["presets"]) == list(PRESET_CHANGES[method])
    defaults = METHOD_CONFIGS[method]().to_dict()
    assert {k["name"]: k["default"] for k in about["knobs"]} == defaults


def test_describe_method_shows_bounds_choices_and_rules():
    knobs = {k["name"]: k for k in describe_method("dmd2")["knobs"]}
    assert (knobs["ttur_ratio"]["accepts"], knobs["ttur_ratio"]["source"]) == ("an integer >= 1", "paper")
    assert describe_method("mmd")["knobs"][-1]["choices"] == ["conditional", "marginal"]
    assert describe_method("dmd2")["rules"] == ["0 <= t_lo < t_hi <= 1"]
    assert describe_method("emd")["one_step_only"] and not describe_method("dmd2")["one_step_only"]
    with pytest.raises(ValueError, match=r"^method: unknown method 'nope'"):
        describe_method("nope")


def test_every_preset_note_names_a_preset_and_its_provenance():
    names = {name for named in PRESET_CHANGES.values() for name in named}
    assert set(PRESET_NOTES) <= names
    assert all(note.startswith(tuple(f"[{s}]" for s in SOURCES)) for name, note in PRESET_NOTES.items()
               if name != "default")


def test_every_field_declares_a_provenance():
    for cls in CONFIGS:
        assert all(source(info) in SOURCES for info in cls.model_fields.values()), cls.key


# -- What each method needs -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "changes", "needs"), [
    ("mmd", {}, True), ("mmd-instant", {}, True), ("emd", {}, False), ("diff-instruct", {}, False),
    ("dmd2", {}, True), ("dmd2", {"gan": False}, False), ("dmd2", {"gan": False, "backward_simulation": False}, True),
])
def test_configs_say_whether_they_need_real_data(method, changes, needs):
    config = METHOD_CONFIGS[method](**changes)
    assert config.needs_data is needs
    check_teacher_data(config, "teacher", has_data=True)
    if needs:
        with pytest.raises(ValueError, match=rf"^method: {method} with these settings needs training data; "
                                             r"teacher 'teacher' has none"):
            check_teacher_data(config, "teacher", has_data=False)
    else:
        check_teacher_data(config, "teacher", has_data=False)


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_configs_say_which_student_step_counts_they_support(method):
    cls = METHOD_CONFIGS[method]
    assert cls.supports_steps(1) and not cls.supports_steps(0)
    assert cls.supports_steps(4) is (not cls.one_step_only)
    assert cls.one_step_only is (method in {"emd", "diff-instruct"})
    if cls.one_step_only:
        with pytest.raises(ValueError, match=rf"^student_steps: {method} is a one-step method; it supports only 1, got 2"):
            build_method_config(method, student_steps=2)
