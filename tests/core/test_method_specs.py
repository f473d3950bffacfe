"""Presets: every named preset builds, presets chain with "+" left to right, and errors name the field."""

import pytest

from core.method_specs import METHOD_CONFIGS, PRESET_CHANGES, PRESETS, build_method_config, preset_changes


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
    """The ring's data std everywhere; lr 1e-3, except §8's 1e-4 for dmd2 and mmd and 3e-4 for mmd-instant, whose
    multistep students drift from the ring at 1e-3 (T13, tests/core/methods/test_outcomes.py); both MMD variants weight
    noise levels equally."""
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
