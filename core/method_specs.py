"""Torch-free configs and presets of the distillation methods (METHODS.md §3-§8).

One frozen dataclass per method; every field has a default and a why-comment with its provenance tag
([paper], [code], [derived], [choice]); `__post_init__` rejects bad values naming the field. Presets are plain
config instances keyed by name. The web app renders its forms from these, so no torch here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

WEIGHTINGS_MMD = ("auto", "edm", "unit", "adaptive")
WEIGHTINGS_VSD = ("dmd", "unit", "inv-snr")
NOISE_CANCEL = ("exact", "injected", "none")
RENOISE = ("conditional", "marginal")


class _Validating:
    """Shared checks; subclasses call them from __post_init__ with their method key as prefix."""

    key: ClassVar[str] = ""

    def _fail(self, name: str, rule: str) -> None:
        raise ValueError(f"{self.key}: {name} {rule}, got {getattr(self, name)!r}")

    def _int_at_least(self, name: str, lo: int) -> None:
        v = getattr(self, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            self._fail(name, f"must be an integer >= {lo}")

    def _positive(self, *names: str) -> None:
        for name in names:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                self._fail(name, "must be > 0")

    def _non_negative(self, *names: str) -> None:
        for name in names:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                self._fail(name, "must be >= 0")

    def _unit_interval(self, name: str, closed_right: bool = False) -> None:
        v = getattr(self, name)
        ok = isinstance(v, (int, float)) and (0 <= v <= 1 if closed_right else 0 <= v < 1)
        if not ok:
            self._fail(name, "must be in [0, 1]" if closed_right else "must be in [0, 1)")

    def _choice(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            self._fail(name, f"must be one of {', '.join(choices)}")

    def _time_range(self, lo: str, hi: str) -> None:
        a, b = getattr(self, lo), getattr(self, hi)
        if not (isinstance(a, (int, float)) and isinstance(b, (int, float)) and 0 <= a < b <= 1):
            raise ValueError(f"{self.key}: {lo} and {hi} must satisfy 0 <= {lo} < {hi} <= 1, got {a!r}, {b!r}")

    def _common(self) -> None:
        self._int_at_least("student_steps", 1)
        self._positive("lr_gen", "grad_clip", "adam_eps")
        self._unit_interval("beta1")
        self._unit_interval("beta2")
        self._non_negative("weight_decay", "guidance")
        self._int_at_least("warmup", 0)
        self._choice("lr_schedule", ("constant", "linear"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.key}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**d)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class MMDConfig(_Validating):
    key: ClassVar[str] = "mmd"
    one_step_only: ClassVar[bool] = False
    student_steps: int = 8          # why: [paper] k >= 8 is where alternating MMD is stable and strong
    lr_gen: float = 1e-4            # why: [choice] the paper gives no LR; tiny networks, sweep 1e-5..1e-3
    lr_aux: float = 1e-4            # why: [choice] same as the generator
    beta1: float = 0.0              # why: [paper] Adam b1 = 0
    beta2: float = 0.99             # why: [paper] Adam b2 = 0.99
    adam_eps: float = 1e-12         # why: [paper]
    weight_decay: float = 0.0       # why: [paper] none
    warmup: int = 1000              # why: [paper] 1,000-step linear warm-up (capped at 5% of the run)
    lr_schedule: str = "linear"     # why: [paper] linear decay to 0 after warm-up
    grad_clip: float = 1.0          # why: [paper] grad-norm clip 1.0
    guidance: float = 1.0           # why: [paper] w = 1 is best for FID; teacher only
    sigma_min: float = 0.002        # why: [paper] EDM/Karras time sampling
    sigma_max: float = 80.0         # why: [paper] EDM value, clamped to the teacher's range
    rho: float = 7.0                # why: [paper] Karras rho
    weighting: str = "auto"         # why: [paper] w_edm for k >= 4, flat for k <= 2 ("auto" picks)
    sigma_data: float = 0.5         # why: [paper] EDM's data std for images in [-1, 1]; measured for toy data
    renoise: str = "conditional"    # why: [paper] conditional re-noising beats marginal (Fig. 3); "marginal" is the ablation

    def __post_init__(self):
        self._common()
        self._positive("lr_aux", "sigma_min", "sigma_max", "rho", "sigma_data")
        if self.sigma_min >= self.sigma_max:
            self._fail("sigma_min", f"must be < sigma_max ({self.sigma_max})")
        self._choice("weighting", WEIGHTINGS_MMD)
        self._choice("renoise", RENOISE)


@dataclass(frozen=True)
class MMDInstantConfig(_Validating):
    key: ClassVar[str] = "mmd-instant"
    one_step_only: ClassVar[bool] = False
    student_steps: int = 8          # why: [paper] matches alternating MMD at >= 8 steps
    lr_gen: float = 1e-4            # why: [choice] as for mmd
    beta1: float = 0.0              # why: [paper]
    beta2: float = 0.99             # why: [paper]
    adam_eps: float = 1e-12         # why: [paper]
    weight_decay: float = 0.0       # why: [paper]
    warmup: int = 1000              # why: [paper]
    lr_schedule: str = "linear"     # why: [paper]
    grad_clip: float = 1.0          # why: [paper]
    guidance: float = 1.0           # why: [paper] straight-through guidance, teacher only
    sigma_min: float = 0.002        # why: [paper]
    sigma_max: float = 80.0         # why: [paper]
    rho: float = 7.0                # why: [paper]
    weighting: str = "auto"         # why: [paper] as for mmd
    sigma_data: float = 0.5         # why: [paper]
    precond_batches: int = 200      # why: [choice] N_Lambda batches of the teacher's own loss estimate Adam's v
    precond_beta2: float = 0.999    # why: [choice] Adam's default second-moment decay
    precond_eps: float = 1e-8       # why: [choice] Adam's default epsilon

    def __post_init__(self):
        self._common()
        self._positive("sigma_min", "sigma_max", "rho", "sigma_data", "precond_eps")
        if self.sigma_min >= self.sigma_max:
            self._fail("sigma_min", f"must be < sigma_max ({self.sigma_max})")
        self._choice("weighting", WEIGHTINGS_MMD)
        self._int_at_least("precond_batches", 1)
        self._unit_interval("precond_beta2")


@dataclass(frozen=True)
class EMDConfig(_Validating):
    key: ClassVar[str] = "emd"
    one_step_only: ClassVar[bool] = True
    student_steps: int = 1          # why: [paper] EMD distils a one-step generator
    lr_gen: float = 1e-4            # why: [choice]
    lr_aux: float = 1e-4            # why: [choice]
    beta1: float = 0.0              # why: [choice] as MMD
    beta2: float = 0.99             # why: [choice]
    adam_eps: float = 1e-8          # why: [choice]
    weight_decay: float = 0.0       # why: [choice]
    warmup: int = 100               # why: [choice] short warm-up, constant LR
    lr_schedule: str = "constant"   # why: [choice]
    grad_clip: float = 1.0          # why: [choice]
    guidance: float = 1.0           # why: [choice] teacher only
    ttur_ratio: int = 5             # why: [choice] DMD2's TTUR finding; the paper's ratio is unconfirmed
    langevin_steps: int = 4         # why: [choice] EMD-K; more steps improve recall at linear cost
    gamma_eps: float = 0.1          # why: [choice] <= 0.1 keeps unadjusted Langevin close to its target
    gamma_z: float = 0.01           # why: [choice] the xi drift scales with SNR; keep gamma_z << gamma_eps
    noise_cancel: str = "exact"     # why: [derived] removes all injected noise from the M-step gradient
    lambda_star: float = -6.0       # why: [paper] log-SNR the one-step generator is evaluated at
    t_lo: float = 0.02              # why: [choice] mirrors DMD2's 2-98% range
    t_hi: float = 0.98              # why: [choice]
    weighting: str = "dmd"          # why: [choice] K = 1 then equals DMD's normalised gradient
    sigma_data: float = 0.5         # why: [code] w_edm for the score network's loss

    def __post_init__(self):
        self._common()
        self._positive("lr_aux", "gamma_eps", "sigma_data")
        if self.gamma_eps > 1:  # |1 - gamma_eps| > 1 makes the eps recursion diverge; 1 is the Diff-Instruct limit
            self._fail("gamma_eps", "must be in (0, 1]")
        self._non_negative("gamma_z")
        self._int_at_least("ttur_ratio", 1)
        self._int_at_least("langevin_steps", 1)
        self._choice("noise_cancel", NOISE_CANCEL)
        self._choice("weighting", WEIGHTINGS_VSD)
        self._time_range("t_lo", "t_hi")


@dataclass(frozen=True)
class DiffInstructConfig(_Validating):
    key: ClassVar[str] = "diff-instruct"
    one_step_only: ClassVar[bool] = True
    student_steps: int = 1          # why: [paper] one-step generator
    lr_gen: float = 1e-4            # why: [choice] EMD's defaults
    lr_aux: float = 1e-4            # why: [choice]
    beta1: float = 0.0              # why: [choice]
    beta2: float = 0.99             # why: [choice]
    adam_eps: float = 1e-8          # why: [choice]
    weight_decay: float = 0.0       # why: [choice]
    warmup: int = 100               # why: [choice]
    lr_schedule: str = "constant"   # why: [choice]
    grad_clip: float = 1.0          # why: [choice]
    guidance: float = 1.0           # why: [choice]
    ttur_ratio: int = 5             # why: [choice] as EMD
    lambda_star: float = -6.0       # why: [choice] as EMD, so T7 compares like with like
    t_lo: float = 0.02              # why: [choice]
    t_hi: float = 0.98              # why: [choice]
    weighting: str = "dmd"          # why: [choice]
    sigma_data: float = 0.5         # why: [code]

    def __post_init__(self):
        self._common()
        self._positive("lr_aux", "sigma_data")
        self._int_at_least("ttur_ratio", 1)
        self._choice("weighting", WEIGHTINGS_VSD)
        self._time_range("t_lo", "t_hi")


@dataclass(frozen=True)
class DMD2Config(_Validating):
    key: ClassVar[str] = "dmd2"
    one_step_only: ClassVar[bool] = False
    student_steps: int = 1          # why: [paper] 1 step (or N = 4 with backward simulation)
    lr_gen: float = 1e-4            # why: [choice] paper 2e-6 at ~300M params; tiny nets take more
    lr_aux: float = 1e-4            # why: [paper] same LR for G and the fake score
    beta1: float = 0.9              # why: [paper] AdamW (0.9, 0.999)
    beta2: float = 0.999            # why: [paper]
    adam_eps: float = 1e-8          # why: [paper] AdamW default
    weight_decay: float = 0.01      # why: [paper]
    warmup: int = 500               # why: [paper] 500-step warm-up (capped at 5% of the run), then constant
    lr_schedule: str = "constant"   # why: [paper]
    grad_clip: float = 10.0         # why: [paper]
    guidance: float = 1.0           # why: [paper] none on ImageNet; teacher only
    ttur_ratio: int = 5             # why: [paper] r = 1 unstable, r = 10 stable but slow
    gan: bool = True                # why: [paper] + GAN takes ImageNet FID 2.61 -> 1.51; needs real data
    gan_weight_gen: float = 3e-3    # why: [paper] ImageNet-64 setting, relative to per-element-mean L_DM
    gan_weight_disc: float = 1e-2   # why: [paper]
    backward_simulation: bool = True  # why: [paper] training on noised real images is worse (Table 4)
    one_step_t: float = 1.0         # why: [code] the generator's input level; SDXL 1-step uses t = 399/999
    t_lo: float = 0.02              # why: [paper] DM loss over 2-98% of the steps
    t_hi: float = 0.98              # why: [paper]
    sigma_data: float = 0.5         # why: [code] w_edm weight of the fake-score loss
    precision: str = "fp32"         # why: [code] fp16 diverged; bf16 allowed on GPU

    def __post_init__(self):
        self._common()
        self._positive("lr_aux", "sigma_data")
        self._non_negative("gan_weight_gen", "gan_weight_disc")
        self._int_at_least("ttur_ratio", 1)
        self._time_range("t_lo", "t_hi")
        if not 0 < self.one_step_t <= 1:
            self._fail("one_step_t", "must be in (0, 1]")
        if self.precision == "fp16":
            self._fail("precision", "must not be fp16 (DMD2 diverges in fp16; use bf16 or fp32)")
        self._choice("precision", ("fp32", "bf16"))


METHOD_CONFIGS: dict[str, type] = {c.key: c for c in (MMDConfig, MMDInstantConfig, EMDConfig, DiffInstructConfig, DMD2Config)}


# -- Presets ---------------------------------------------------------------------------------------------------
# Tiny-CPU defaults per benchmark ([choice], METHODS.md §8) and the paper ablations as named variants.
# sigma_data is the measured data std: 1.42 for both toy2d mixtures, 0.64 for 16x16 digits in [-1, 1].
_TOY = {"sigma_data": 1.42, "lr_gen": 1e-3, "lr_aux": 1e-3}
# dmd2 keeps §8's 1e-4 on the ring: at 1e-3 its 4-step student drifts away from the ring over the outcome test's 2,000
# generator steps (T13, 10,000 iterations, seeds 0-2: energy 0.20-0.22 against the teacher's 4-step 0.033); at 1e-4
# it ends at 0.0077-0.0133.
_TOY_DMD2 = {**_TOY, "lr_gen": 1e-4, "lr_aux": 1e-4}
# The MMD variants on the ring weight every noise level alike (w = 1) for every k [choice; the paper's w_edm for k >= 4
# is kept for images]: w_edm reaches 1/sigma_min^2 = 250,000 at sigma_min = 0.002, where the moment gap A - T is mostly
# the networks' own error, so those few examples set the clipped gradient's direction and Adam (b1 = 0) walks the
# student off the teacher (T13, 2,000 generator steps, seeds 0-2: with w_edm the 8-step mmd student ended at energy
# 0.0105-0.0113 and mmd-instant at 0.0100-0.0159, against the teacher's own 8-step 0.0036). With w = 1, mmd at 1e-4
# reaches 0.0022-0.0029 (its 1-step student 0.026-0.027 against 0.41, all 8 modes). mmd-instant's learning rate depends
# on how far the student must travel from its start (the teacher run through the student's sampler): its native 8-step
# student starts at the teacher's own 8-step quality and only refines it, so it trains at 3e-4 (seeds 0-2: 0.0027-0.0031;
# at 1e-3 Adam's walk left seeds 1-2 at 0.0041 / 0.0039); its 1-step student starts from the collapsed one-step
# prediction and must reach the ring, so "toy2d-1step" keeps 1e-3 (at 3e-4 it covered only 4 of 8 modes on seeds 1-2).
_TOY_MMD = {**_TOY, "lr_gen": 1e-4, "lr_aux": 1e-4, "weighting": "unit"}
_TOY_MMD_INSTANT = {**_TOY, "lr_gen": 3e-4, "weighting": "unit"}
_DIGITS = {"sigma_data": 0.64}


def _presets(cls, extra: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """Preset name -> field changes from the method's defaults; a benchmark preset's changes that name fields the
    method lacks are dropped (mmd-instant has no auxiliary learning rate)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    base = {"default": {}, "toy2d": _TOY, "digits": _DIGITS}
    return {name: {k: v for k, v in changes.items() if k in fields} for name, changes in {**base, **extra}.items()}


# Paper-faithful settings for real (~300M-parameter, EDM or Stable Diffusion) teachers. MMD gives no learning rate;
# 2e-6 at batch 512 on a ~300M EDM network is the unofficial reproduction's [code]. EMD's appendix values are not in
# the spec, so its preset keeps our knobs at the paper's ImageNet-128 K = 16 and λ* = -6 with that learning rate.
_PAPER_LR = {"lr_gen": 2e-6, "lr_aux": 2e-6, "sigma_data": 0.5}
_DMD2_SDXL = {"lr_gen": 5e-7, "lr_aux": 5e-7, "gan_weight_gen": 5e-3, "guidance": 8.0}

# Benchmark presets set the scale (data std, learning rates); ablation presets switch one mechanism. They compose
# with "+", left to right: "digits+no-gan" is the digits preset with the GAN term off.
PRESET_CHANGES: dict[str, dict[str, dict[str, Any]]] = {
    "mmd": _presets(MMDConfig, {"toy2d": _TOY_MMD, "paper": _PAPER_LR, "marginal-renoise": {"renoise": "marginal"},
                                "4-step": {"student_steps": 4}, "2-step": {"student_steps": 2}}),
    "mmd-instant": _presets(MMDInstantConfig, {"toy2d": _TOY_MMD_INSTANT, "paper": _PAPER_LR,
                                               "toy2d-1step": {**_TOY_MMD_INSTANT, "lr_gen": 1e-3, "student_steps": 1}}),
    "emd": _presets(EMDConfig, {"paper": {**_PAPER_LR, "langevin_steps": 16}, "no-cancel": {"noise_cancel": "none"},
                                "k1": {"langevin_steps": 1}, "k8": {"langevin_steps": 8}}),
    "diff-instruct": _presets(DiffInstructConfig, {"paper": _PAPER_LR}),
    "dmd2": _presets(DMD2Config, {
        "toy2d": _TOY_DMD2,
        "paper": _PAPER_LR,  # ImageNet-64 with an EDM teacher: 2e-6, r = 5, λ_G / λ_D = 3e-3 / 1e-2, no guidance
        "sdxl-4step": {**_DMD2_SDXL, "student_steps": 4},
        "sdxl-1step": {**_DMD2_SDXL, "one_step_t": 399 / 999},  # the generator reads t = 399 of 999
        "no-ttur": {"ttur_ratio": 1}, "no-gan": {"gan": False},
        "no-backsim": {"student_steps": 4, "backward_simulation": False}, "4-step": {"student_steps": 4}}),
}
PRESETS: dict[str, dict[str, Any]] = {m: {name: METHOD_CONFIGS[m](**changes) for name, changes in named.items()}
                                      for m, named in PRESET_CHANGES.items()}


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


def _parse_value(cls, key: str, raw: str):
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    kind = types[key]
    try:
        if kind in ("bool", bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return raw.lower() in ("true", "1", "yes")
        if kind in ("int", int):
            return int(raw)
        if kind in ("float", float):
            return float(raw)
        return raw
    except ValueError:
        raise ValueError(f"{cls.key}: {key} expects a {kind} value, got {raw!r}") from None


def build_method_config(method: str, *, preset: str = "default", student_steps: int | None = None,
                        sets: list[str] | tuple[str, ...] = ()):
    """Method config from a preset, --student-steps and KEY=VALUE overrides; errors name the field."""
    if method not in METHOD_CONFIGS:
        raise ValueError(f"method: unknown method {method!r} (known: {', '.join(METHOD_CONFIGS)})")
    cls = METHOD_CONFIGS[method]
    changes = preset_changes(method, preset)
    fields = {f.name for f in dataclasses.fields(cls)}
    for item in sets:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"set: {item!r} is not KEY=VALUE")
        if key not in fields:
            raise ValueError(f"set: unknown key {key!r} for {method} (known: {', '.join(sorted(fields))})")
        changes[key] = _parse_value(cls, key, raw.strip())
    if student_steps is not None:
        changes["student_steps"] = student_steps
    config = cls(**changes)
    if cls.one_step_only and config.student_steps != 1:
        raise ValueError(f"student_steps: {method} is a one-step method; it supports only 1, got {config.student_steps}")
    return config


def needs_data(method: str, config) -> bool:
    """Whether the method, so configured, trains on real data (MMD always; DMD2 for its GAN or noised-real inputs)."""
    return method in ("mmd", "mmd-instant") or (method == "dmd2" and (config.gan or not config.backward_simulation))


def check_teacher_data(method: str, config, teacher: str, has_data: bool) -> None:
    if needs_data(method, config) and not has_data:
        raise ValueError(f"method: {method} with these settings needs training data; teacher {teacher!r} has none "
                         "(use a data-free method or dmd2 with gan=false)")
