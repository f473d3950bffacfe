"""Presets of the distillation methods and the one way to build a config: preset chain, --set overrides, steps.

The configs themselves, with each knob's default, provenance, why and bounds, live in core/method_configs.py (the
knob machinery in core/knobs.py); they are re-exported here for the code that imports them from this module.
Torch-free: the web app renders its forms and `distill --help-knobs` from these.
"""

from __future__ import annotations

from typing import Any

from core.knobs import kind, knob_rows
from core.method_configs import (
    LR_SCHEDULES,
    METHOD_CONFIGS,
    NOISE_CANCEL,
    RENOISE,
    WEIGHTINGS_MMD,
    WEIGHTINGS_VSD,
    DiffInstructConfig,
    DMD2Config,
    EMDConfig,
    MethodConfig,
    MMDConfig,
    MMDInstantConfig,
)
from core.specs import SHAPES_GUIDANCE

__all__ = ["LR_SCHEDULES", "METHOD_CONFIGS", "NOISE_CANCEL", "PRESETS", "PRESET_CHANGES", "PRESET_NOTES", "RENOISE",
           "WEIGHTINGS_MMD", "WEIGHTINGS_VSD", "DMD2Config", "DiffInstructConfig", "EMDConfig", "MMDConfig",
           "MMDInstantConfig", "MethodConfig", "build_method_config", "check_teacher_data", "describe_method",
           "preset_changes"]


# -- Presets ---------------------------------------------------------------------------------------------------
# Tiny-CPU defaults per benchmark ([choice], docs/methods.md#presets) and the paper ablations as named variants.
# sigma_data is the measured data std: 1.42 for both toy2d mixtures, 0.64 for 16x16 digits in [-1, 1].
_TOY = {"sigma_data": 1.42, "lr_gen": 1e-3, "lr_aux": 1e-3}
# dmd2 keeps the tiny-CPU default 1e-4 on the ring: at 1e-3 its 4-step student drifts away from the ring over the
# outcome test's 2,000 generator steps (docs/methods.md#outcome-tests, 10,000 iterations, seeds 0-2: energy 0.20-0.22
# against the teacher's 4-step 0.033); at 1e-4 it ends at 0.0077-0.0133.
_TOY_DMD2 = {**_TOY, "lr_gen": 1e-4, "lr_aux": 1e-4}
# The MMD variants on the ring weight every noise level alike (w = 1) for every k [choice; the paper's w_edm for k >= 4
# is kept for images]: w_edm reaches 1/sigma_min^2 = 250,000 at sigma_min = 0.002, where the moment gap A - T is mostly
# the networks' own error, so those few examples set the clipped gradient's direction and Adam (b1 = 0) walks the
# student off the teacher (the outcome tests, 2,000 generator steps, seeds 0-2: with w_edm the 8-step mmd student ended at energy
# 0.0105-0.0113 and mmd-instant at 0.0100-0.0159, against the teacher's own 8-step 0.0036). With w = 1, mmd at 1e-4
# reaches 0.0022-0.0029 (its 1-step student 0.026-0.027 against 0.41, all 8 modes). mmd-instant's learning rate depends
# on how far the student must travel from its start (the teacher run through the student's sampler): its native 8-step
# student starts at the teacher's own 8-step quality and only refines it, so it trains at 3e-4 (seeds 0-2: 0.0027-0.0031;
# at 1e-3 Adam's walk left seeds 1-2 at 0.0041 / 0.0039); its 1-step student starts from the collapsed one-step
# prediction and must reach the ring, so "toy2d-1step" keeps 1e-3 (at 3e-4 it covered only 4 of 8 modes on seeds 1-2).
_TOY_MMD = {**_TOY, "lr_gen": 1e-4, "lr_aux": 1e-4, "weighting": "unit"}
_TOY_MMD_INSTANT = {**_TOY, "lr_gen": 3e-4, "weighting": "unit"}
_DIGITS = {"sigma_data": 0.64}
# shapes: the teacher's latents are scaled to unit std (its VAE's scaling_factor = 1 / std), and the teacher is guided
# at its default weight. DMD2's fake score trains on the eps-MSE, as for Stable Diffusion (the teacher is an SD-format
# v-prediction model on SD's schedule, as SD 2.x).
_SHAPES = {"sigma_data": 1.0, "guidance": SHAPES_GUIDANCE}
_SHAPES_DMD2 = {**_SHAPES, "fake_weighting": "eps"}
# mmd-instant spends its first precond_batches iterations on the preconditioner; at the benchmark's 30-CPU-minute cap a
# shapes student gets ~250 iterations (4.3 s each), so the default 200 would leave 50 to train: 50 batches of 64 still
# average Adam's v over 3,200 examples.
_SHAPES_MMD_INSTANT = {**_SHAPES, "precond_batches": 50}


def _presets(cls, extra: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """Preset name -> field changes from the method's defaults; a benchmark preset's changes that name fields the
    method lacks are dropped (mmd-instant has no auxiliary learning rate)."""
    fields = set(cls.model_fields)
    base = {"default": {}, "toy2d": _TOY, "digits": _DIGITS, "shapes": _SHAPES}
    return {name: {k: v for k, v in changes.items() if k in fields} for name, changes in {**base, **extra}.items()}


# Paper-faithful settings for real (~300M-parameter, EDM or Stable Diffusion) teachers. MMD gives no learning rate;
# 2e-6 at batch 512 on a ~300M EDM network is the unofficial reproduction's [code]. EMD's appendix values are not in
# the spec, so its preset keeps our knobs at the paper's ImageNet-128 K = 16 and λ* = -6 with that learning rate.
_PAPER_LR = {"lr_gen": 2e-6, "lr_aux": 2e-6, "sigma_data": 0.5}
# DMD2's Stable Diffusion recipes, from the official launch scripts [code, tianweiy/DMD2 experiments/sdv1.5/*.sh and
# experiments/sdxl/*.sh]: the fake score trains on the unweighted eps-MSE, the teacher is guided, the GAN reads A's
# bottleneck on noised images. SD 1.5 runs in two stages: 1e-5 without the GAN (data-free, prompts only), then the
# best checkpoint resumed at 5e-7 with the GAN on LAION latents.
_DMD2_SD15 = {"lr_gen": 1e-5, "lr_aux": 1e-5, "guidance": 1.75, "ttur_ratio": 10, "gan": False,
              "fake_weighting": "eps"}
_DMD2_SD15_GAN = {**_DMD2_SD15, "lr_gen": 5e-7, "lr_aux": 5e-7, "gan": True, "gan_weight_gen": 1e-3,
                  "gan_weight_disc": 1e-2}
_DMD2_SDXL = {"lr_gen": 5e-7, "lr_aux": 5e-7, "gan_weight_gen": 5e-3, "guidance": 8.0, "fake_weighting": "eps"}

# Benchmark presets set the scale (data std, learning rates); ablation presets switch one mechanism. They compose
# with "+", left to right: "digits+no-gan" is the digits preset with the GAN term off.
PRESET_CHANGES: dict[str, dict[str, dict[str, Any]]] = {
    "mmd": _presets(MMDConfig, {"toy2d": _TOY_MMD, "paper": _PAPER_LR, "marginal-renoise": {"renoise": "marginal"},
                                "4-step": {"student_steps": 4}, "2-step": {"student_steps": 2}}),
    "mmd-instant": _presets(MMDInstantConfig, {"toy2d": _TOY_MMD_INSTANT, "paper": _PAPER_LR,
                                               "shapes": _SHAPES_MMD_INSTANT,
                                               "toy2d-1step": {**_TOY_MMD_INSTANT, "lr_gen": 1e-3, "student_steps": 1}}),
    "emd": _presets(EMDConfig, {"paper": {**_PAPER_LR, "langevin_steps": 16}, "no-cancel": {"noise_cancel": "none"},
                                "k1": {"langevin_steps": 1}, "k8": {"langevin_steps": 8}}),
    "diff-instruct": _presets(DiffInstructConfig, {"paper": _PAPER_LR}),
    "dmd2": _presets(DMD2Config, {
        "toy2d": _TOY_DMD2, "shapes": _SHAPES_DMD2,
        "paper": _PAPER_LR,  # ImageNet-64 with an EDM teacher: 2e-6, r = 5, λ_G / λ_D = 3e-3 / 1e-2, no guidance
        "sd15": _DMD2_SD15, "sd15-gan": _DMD2_SD15_GAN,
        "sdxl-4step": {**_DMD2_SDXL, "student_steps": 4},
        "sdxl-1step": {**_DMD2_SDXL, "one_step_t": 399 / 999},  # the generator reads t = 399 of 999
        "no-ttur": {"ttur_ratio": 1}, "no-gan": {"gan": False},
        "no-backsim": {"student_steps": 4, "backward_simulation": False}, "4-step": {"student_steps": 4}}),
}
PRESETS: dict[str, dict[str, Any]] = {m: {name: METHOD_CONFIGS[m](**changes) for name, changes in named.items()}
                                      for m, named in PRESET_CHANGES.items()}


# Where each preset's settings come from, where that is known; a preset of the same name means the same thing for
# every method that has it.
PRESET_NOTES: dict[str, str] = {
    "default": "each knob's own default (see its provenance)",
    "toy2d": "[choice] the ring's measured data std (1.42); learning rates and weighting measured on the ring "
             "(core/method_specs.py gives the figures)",
    "digits": "[choice] the digits' measured data std (0.64)",
    "shapes": "[choice] the shapes teacher's latents (unit std by its VAE's scaling factor) and its default guidance; "
              "DMD2's fake score on the eps-MSE as for Stable Diffusion; mmd-instant's preconditioner on 50 batches "
              "(the benchmark's 30-CPU-minute cap)",
    "paper": "[paper] settings for ~300M-parameter teachers; the learning rate is the unofficial reproduction's [code]",
    "toy2d-1step": "[choice] measured: the 1-step student needs lr 1e-3 to reach every mode of the ring",
    "marginal-renoise": "[paper] MMD's re-noising ablation (Fig. 3)",
    "sd15": "[code] DMD2's SD 1.5 1-step first stage: lr 1e-5, no GAN (data-free), w = 1.75, r = 10, eps-MSE fake score",
    "sd15-gan": "[code] DMD2's SD 1.5 second stage: lr 5e-7 with the GAN (1e-3 / 1e-2) on real latents; start it "
                "from the first stage with --init",
    "sdxl-4step": "[paper] DMD2's SDXL 4-step setting",
    "sdxl-1step": "[paper] DMD2's SDXL 1-step setting, the generator reading t = 399 of 999",
    "no-ttur": "[paper] DMD2's ablation: ratio 1",
    "no-gan": "[paper] DMD2's ablation without the GAN term",
    "no-backsim": "[paper] DMD2's ablation: noised real images instead of backward simulation (Table 4)",
    "no-cancel": "[derived] EMD without noise cancellation",
    "k1": "[paper] EMD with one Langevin step, Diff-Instruct's limit",
    "k8": "[choice] EMD with 8 Langevin steps: better recall at twice the cost",
    "2-step": "[choice] a 2-step student",
    "4-step": "[choice] a 4-step student",
}


def preset_changes(method: str, preset: str) -> dict[str, Any]:
    """The field changes of a preset or a "+"-joined chain of presets, applied left to right."""
    changes: dict[str, Any] = {}
    for name in preset.split("+"):
        name = name.strip()
        if name not in PRESET_CHANGES[method]:
            raise ValueError(f"preset: unknown preset {name!r} for {method} "
                             f"(known: {', '.join(PRESET_CHANGES[method])}; join with +, e.g. digits+no-gan)")
        changes.update(PRESET_CHANGES[method][name])
    return changes


def _parse_value(cls: type[MethodConfig], key: str, raw: str) -> Any:
    """A KEY=VALUE override's text as the field's own type (the config then checks its bounds)."""
    field_kind = kind(cls.model_fields[key])
    try:
        if field_kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return raw.lower() in ("true", "1", "yes")
        if field_kind == "int":
            return int(raw)
        if field_kind == "float":
            return float(raw)
        return raw
    except ValueError:
        raise ValueError(f"{cls.key}: {key} expects a {field_kind} value, got {raw!r}") from None


def build_method_config(method: str, *, preset: str = "default", student_steps: int | None = None,
                        sets: list[str] | tuple[str, ...] = ()) -> MethodConfig:
    """Method config from a preset, --student-steps and KEY=VALUE overrides; errors name the field."""
    if method not in METHOD_CONFIGS:
        raise ValueError(f"method: unknown method {method!r} (known: {', '.join(METHOD_CONFIGS)})")
    cls = METHOD_CONFIGS[method]
    changes = preset_changes(method, preset)
    for item in sets:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"set: {item!r} is not KEY=VALUE")
        if key not in cls.model_fields:
            raise ValueError(f"set: unknown key {key!r} for {method} (known: {', '.join(sorted(cls.model_fields))})")
        changes[key] = _parse_value(cls, key, raw.strip())
    if student_steps is not None:
        changes["student_steps"] = student_steps
    config = cls(**changes)
    if not cls.supports_steps(config.student_steps):
        raise ValueError(f"student_steps: {method} is a one-step method; it supports only 1, got {config.student_steps}")
    return config


def check_teacher_data(config: MethodConfig, teacher: str, has_data: bool) -> None:
    """Refuse a config that trains on real data with a teacher that has none, before any work."""
    if config.needs_data and not has_data:
        raise ValueError(f"method: {config.key} with these settings needs training data; teacher {teacher!r} has none "
                         "(use a data-free method or dmd2 with gan=false)")


def describe_method(method: str) -> dict[str, Any]:
    """Every knob of a method (default, accepted values, provenance, why), its cross-field rules and its presets:
    what `distill --help-knobs` prints."""
    if method not in METHOD_CONFIGS:
        raise ValueError(f"method: unknown method {method!r} (known: {', '.join(METHOD_CONFIGS)})")
    cls = METHOD_CONFIGS[method]
    return {"method": method, "one_step_only": cls.one_step_only, "knobs": knob_rows(cls), "rules": list(cls.rules),
            "presets": {name: PRESET_NOTES.get(name, "") for name in PRESET_CHANGES[method]}}
