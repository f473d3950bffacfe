"""The distillation methods' configs (docs/methods.md): one frozen model of knobs per method.

Every field is a `knob()` with its default, provenance (paper, code, derived, choice), why and bounds, which is all the
help and the validation read. Each config also says what its method needs: real training data (`needs_data`) and
which student step counts it supports (`one_step_only`, `supports_steps`). Torch-free: the web app renders its forms
from these.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import model_validator

from core.knobs import PRECISIONS, KnobModel, knob

WEIGHTINGS_MMD = ("auto", "edm", "unit", "adaptive")
WEIGHTINGS_VSD = ("dmd", "unit", "inv-snr")
NOISE_CANCEL = ("exact", "injected", "none")
RENOISE = ("conditional", "marginal")
FAKE_WEIGHTINGS = ("edm", "eps")
LR_SCHEDULES = ("constant", "linear")
STUDENT_KINDS = ("full", "lora")
LORA_TARGETS = ("to_q,to_k,to_v,to_out.0,proj_in,proj_out,ff.net.0.proj,ff.net.2,conv1,conv2,conv_shortcut,"
                "downsamplers.0.conv,upsamplers.0.conv,time_emb_proj")

_TIME_RANGE = "0 <= t_lo < t_hi <= 1"
_SIGMA_ORDER = "sigma_min < sigma_max"
_GAMMA_EPS = "gamma_eps <= 1"
_RULE_CHECKS = {_TIME_RANGE: "_check_time_range", _SIGMA_ORDER: "_check_sigma_order", _GAMMA_EPS: "_check_gamma_eps"}


class MethodConfig(KnobModel):
    """What every method config answers besides its knobs."""

    one_step_only: ClassVar[bool] = False
    # Shared by every method: how the loop runs the networks (core.stepping), not what the method computes.
    precision: str = knob("fp32", "choice", "bf16 autocasts the forward passes (fp32 master weights, about half the "
                          "activation memory on GPUs); fp16 is refused", choices=PRECISIONS)
    gradient_checkpointing: bool = knob(False, "choice", "recompute the trainable UNets' activations in the backward "
                                        "pass: less memory for about one more forward")
    student: str = knob("full", "choice", 'lora: the student (and the auxiliary / fake score) as LoRA adapters on one '
                        "frozen copy of the teacher's weights, exported as diffusers LoRA weights", choices=STUDENT_KINDS)
    lora_rank: int = knob(16, "choice", "adapter rank; alpha = rank, so the adapters' scale is 1 at any rank", ge=1)
    lora_targets: str = knob(LORA_TARGETS, "code", "comma-separated UNet module names that get adapters: the "
                             "attention projections, ResNet convolutions, resamplers and time projections (LCM-LoRA's "
                             "list)", min_length=1)

    @property
    def lora_target_modules(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())

    @property
    def needs_data(self) -> bool:
        """Whether training, so configured, draws real data batches (a teacher without a dataset cannot serve it)."""
        return False

    @classmethod
    def supports_steps(cls, steps: int) -> bool:
        """Whether a student of this method samples with `steps` steps."""
        return steps == 1 if cls.one_step_only else steps >= 1

    @model_validator(mode="after")
    def _cross_field(self):
        """The rules that tie fields together, each named in `rules` (which the help prints)."""
        for rule in self.rules:
            getattr(self, _RULE_CHECKS[rule])()
        return self

    def _check_time_range(self) -> None:
        a, b = self.t_lo, self.t_hi
        if not 0 <= a < b <= 1:
            raise ValueError(f"{self.key}: t_lo and t_hi must satisfy {_TIME_RANGE}, got {a!r}, {b!r}")

    def _check_gamma_eps(self) -> None:
        if self.gamma_eps > 1:  # |1 - gamma_eps| > 1 makes the eps recursion diverge; 1 is the Diff-Instruct limit
            raise ValueError(f"{self.key}: gamma_eps must be in (0, 1], got {self.gamma_eps!r}")

    def _check_sigma_order(self) -> None:
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"{self.key}: sigma_min must be < sigma_max ({self.sigma_max}), got {self.sigma_min!r}")


class MMDConfig(MethodConfig):
    key: ClassVar[str] = "mmd"
    rules: ClassVar[tuple[str, ...]] = (_SIGMA_ORDER,)
    student_steps: int = knob(8, "paper", "k >= 8 is where alternating MMD is stable and strong", ge=1)
    lr_gen: float = knob(1e-4, "choice", "the paper gives no LR; tiny networks, sweep 1e-5..1e-3", gt=0)
    lr_aux: float = knob(1e-4, "choice", "same as the generator", gt=0)
    beta1: float = knob(0.0, "paper", "Adam b1 = 0", ge=0, lt=1)
    beta2: float = knob(0.99, "paper", "Adam b2 = 0.99", ge=0, lt=1)
    adam_eps: float = knob(1e-12, "paper", gt=0)
    weight_decay: float = knob(0.0, "paper", "none", ge=0)
    warmup: int = knob(1000, "paper", "1,000-step linear warm-up (capped at 5% of the run)", ge=0)
    lr_schedule: str = knob("linear", "paper", "linear decay to 0 after warm-up", choices=LR_SCHEDULES)
    grad_clip: float = knob(1.0, "paper", "grad-norm clip 1.0", gt=0)
    guidance: float = knob(1.0, "paper", "w = 1 is best for FID; teacher only", ge=0)
    sigma_min: float = knob(0.002, "paper", "EDM/Karras time sampling", gt=0)
    sigma_max: float = knob(80.0, "paper", "EDM value, clamped to the teacher's range", gt=0)
    rho: float = knob(7.0, "paper", "Karras rho", gt=0)
    weighting: str = knob("auto", "paper", 'w_edm for k >= 4, flat for k <= 2 ("auto" picks)', choices=WEIGHTINGS_MMD)
    sigma_data: float = knob(0.5, "paper", "EDM's data std for images in [-1, 1]; measured for toy data", gt=0)
    renoise: str = knob("conditional", "paper",
                        'conditional re-noising beats marginal (Fig. 3); "marginal" is the ablation', choices=RENOISE)

    @property
    def needs_data(self) -> bool:
        return True  # the student's input z_t is a noised real data batch



class MMDInstantConfig(MethodConfig):
    key: ClassVar[str] = "mmd-instant"
    rules: ClassVar[tuple[str, ...]] = (_SIGMA_ORDER,)
    student_steps: int = knob(8, "paper", "matches alternating MMD at >= 8 steps", ge=1)
    lr_gen: float = knob(1e-4, "choice", "as for mmd", gt=0)
    beta1: float = knob(0.0, "paper", ge=0, lt=1)
    beta2: float = knob(0.99, "paper", ge=0, lt=1)
    adam_eps: float = knob(1e-12, "paper", gt=0)
    weight_decay: float = knob(0.0, "paper", ge=0)
    warmup: int = knob(1000, "paper", ge=0)
    lr_schedule: str = knob("linear", "paper", choices=LR_SCHEDULES)
    grad_clip: float = knob(1.0, "paper", gt=0)
    guidance: float = knob(1.0, "paper", "straight-through guidance, teacher only", ge=0)
    sigma_min: float = knob(0.002, "paper", gt=0)
    sigma_max: float = knob(80.0, "paper", gt=0)
    rho: float = knob(7.0, "paper", gt=0)
    weighting: str = knob("auto", "paper", "as for mmd", choices=WEIGHTINGS_MMD)
    sigma_data: float = knob(0.5, "paper", gt=0)
    precond_batches: int = knob(200, "choice", "N_Lambda batches of the teacher's own loss estimate Adam's v", ge=1)
    precond_beta2: float = knob(0.999, "choice", "Adam's default second-moment decay", ge=0, lt=1)
    precond_eps: float = knob(1e-8, "choice", "Adam's default epsilon", gt=0)

    @property
    def needs_data(self) -> bool:
        return True  # the preconditioner's teacher loss and the student's input both noise real data



class EMDConfig(MethodConfig):
    key: ClassVar[str] = "emd"
    one_step_only: ClassVar[bool] = True
    rules: ClassVar[tuple[str, ...]] = (_GAMMA_EPS, _TIME_RANGE)
    student_steps: int = knob(1, "paper", "EMD distils a one-step generator", ge=1)
    lr_gen: float = knob(1e-4, "choice", gt=0)
    lr_aux: float = knob(1e-4, "choice", gt=0)
    beta1: float = knob(0.0, "choice", "as MMD", ge=0, lt=1)
    beta2: float = knob(0.99, "choice", ge=0, lt=1)
    adam_eps: float = knob(1e-8, "choice", gt=0)
    weight_decay: float = knob(0.0, "choice", ge=0)
    warmup: int = knob(100, "choice", "short warm-up, constant LR", ge=0)
    lr_schedule: str = knob("constant", "choice", choices=LR_SCHEDULES)
    grad_clip: float = knob(1.0, "choice", gt=0)
    guidance: float = knob(1.0, "choice", "teacher only", ge=0)
    ttur_ratio: int = knob(5, "choice", "DMD2's TTUR finding; the paper's ratio is unconfirmed", ge=1)
    langevin_steps: int = knob(4, "choice", "EMD-K; more steps improve recall at linear cost", ge=1)
    gamma_eps: float = knob(0.1, "choice", "<= 0.1 keeps unadjusted Langevin close to its target", gt=0)
    gamma_z: float = knob(0.01, "choice", "the xi drift scales with SNR; keep gamma_z << gamma_eps", ge=0)
    noise_cancel: str = knob("exact", "derived", "removes all injected noise from the M-step gradient",
                             choices=NOISE_CANCEL)
    lambda_star: float = knob(-6.0, "paper", "log-SNR the one-step generator is evaluated at")
    t_lo: float = knob(0.02, "choice", "mirrors DMD2's 2-98% range")
    t_hi: float = knob(0.98, "choice")
    weighting: str = knob("dmd", "choice", "K = 1 then equals DMD's normalised gradient", choices=WEIGHTINGS_VSD)
    sigma_data: float = knob(0.5, "code", "w_edm for the score network's loss", gt=0)



class DiffInstructConfig(MethodConfig):
    key: ClassVar[str] = "diff-instruct"
    one_step_only: ClassVar[bool] = True
    rules: ClassVar[tuple[str, ...]] = (_TIME_RANGE,)
    student_steps: int = knob(1, "paper", "one-step generator", ge=1)
    lr_gen: float = knob(1e-4, "choice", "EMD's defaults", gt=0)
    lr_aux: float = knob(1e-4, "choice", gt=0)
    beta1: float = knob(0.0, "choice", ge=0, lt=1)
    beta2: float = knob(0.99, "choice", ge=0, lt=1)
    adam_eps: float = knob(1e-8, "choice", gt=0)
    weight_decay: float = knob(0.0, "choice", ge=0)
    warmup: int = knob(100, "choice", ge=0)
    lr_schedule: str = knob("constant", "choice", choices=LR_SCHEDULES)
    grad_clip: float = knob(1.0, "choice", gt=0)
    guidance: float = knob(1.0, "choice", ge=0)
    ttur_ratio: int = knob(5, "choice", "as EMD", ge=1)
    lambda_star: float = knob(-6.0, "choice", "as EMD, so the K = 1 comparison with EMD is like for like")
    t_lo: float = knob(0.02, "choice")
    t_hi: float = knob(0.98, "choice")
    weighting: str = knob("dmd", "choice", choices=WEIGHTINGS_VSD)
    sigma_data: float = knob(0.5, "code", gt=0)



class DMD2Config(MethodConfig):
    key: ClassVar[str] = "dmd2"
    rules: ClassVar[tuple[str, ...]] = (_TIME_RANGE,)
    student_steps: int = knob(1, "paper", "1 step (or N = 4 with backward simulation)", ge=1)
    lr_gen: float = knob(1e-4, "choice", "paper 2e-6 at ~300M params; tiny nets take more", gt=0)
    lr_aux: float = knob(1e-4, "paper", "same LR for G and the fake score", gt=0)
    beta1: float = knob(0.9, "paper", "AdamW (0.9, 0.999)", ge=0, lt=1)
    beta2: float = knob(0.999, "paper", ge=0, lt=1)
    adam_eps: float = knob(1e-8, "paper", "AdamW default", gt=0)
    weight_decay: float = knob(0.01, "paper", ge=0)
    warmup: int = knob(500, "paper", "500-step warm-up (capped at 5% of the run), then constant", ge=0)
    lr_schedule: str = knob("constant", "paper", choices=LR_SCHEDULES)
    grad_clip: float = knob(10.0, "paper", gt=0)
    guidance: float = knob(1.0, "paper", "none on ImageNet; teacher only", ge=0)
    ttur_ratio: int = knob(5, "paper", "r = 1 unstable, r = 10 stable but slow", ge=1)
    gan: bool = knob(True, "paper", "+ GAN takes ImageNet FID 2.61 -> 1.51; needs real data")
    gan_weight_gen: float = knob(3e-3, "paper", "ImageNet-64 setting, relative to per-element-mean L_DM", ge=0)
    gan_weight_disc: float = knob(1e-2, "paper", ge=0)
    backward_simulation: bool = knob(True, "paper", "training on noised real images is worse (Table 4)")
    one_step_t: float = knob(1.0, "code", "the generator's input level; SDXL 1-step uses t = 399/999", gt=0, le=1)
    t_lo: float = knob(0.02, "paper", "DM loss over 2-98% of the steps")
    t_hi: float = knob(0.98, "paper")
    sigma_data: float = knob(0.5, "code", "w_edm weight of the fake-score loss", gt=0)
    fake_weighting: str = knob("edm", "code", 'fake-score loss: w_edm x-MSE (EDM teachers) or "eps", the unweighted '
                               "eps-MSE of the SD/SDXL code", choices=FAKE_WEIGHTINGS)

    @property
    def needs_data(self) -> bool:
        return self.gan or not self.backward_simulation  # the GAN's real images, or noised real inputs



METHOD_CONFIGS: dict[str, type[MethodConfig]] = {
    c.key: c for c in (MMDConfig, MMDInstantConfig, EMDConfig, DiffInstructConfig, DMD2Config)}
