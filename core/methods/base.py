"""The method plug-in contract (docs/methods.md#the-plug-in-contract) and the plumbing every method shares.

A method is built from (teacher, config, total_steps, device); it copies the teacher into its own networks, builds
its optimizers and LR schedules, and draws all randomness from `self.generator`, which the training loop re-seeds
every step. Subclasses define `losses(batch)`, a generator that yields one core.stepping.Update per optimizer to step
this iteration and returns its metrics (tensors, never read back to the host), and `sample(noise, cond, steps)`.
The loop (core.stepping.run_iteration) does backward, clipping, optimizer and schedule steps and mixed precision;
`train_step(batch)` runs one such iteration outside the loop and returns the metrics as floats.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from typing import ClassVar

import torch
from torch import nn

from core.denoisers import CFGDenoiser, Denoiser
from core.lora import load_shipped_state, lora_copy, shipped_state, trainable_parameters
from core.losses import fake_score_loss
from core.nets import parameter_hash
from core.noise import seeded_noise
from core.posterior import marginal_sample
from core.samplers import ancestral
from core.schedules import time_grid
from core.stepping import SteppedTask, Update
from core.text_cond import TextCond
from core.time_sampling import edm_weight, uniform_t


def clone_trainable(denoiser: Denoiser) -> Denoiser:
    """A trainable copy of a (frozen) denoiser: the student and auxiliary networks start as the teacher [paper]."""
    if not any(True for _ in denoiser.parameters()):
        raise ValueError("teacher: an analytic teacher has no network to copy; distil a network teacher "
                         "(e.g. toy2d-ring instead of toy2d-ring-gmm)")
    return copy.deepcopy(denoiser).requires_grad_(True).train()


def enable_checkpointing(module: nn.Module) -> None:
    """Turn on diffusers' gradient checkpointing in every UNet inside `module`; refused where there is none."""
    unets = [m for m in module.modules() if getattr(m, "_supports_gradient_checkpointing", False)]
    if not unets:
        raise ValueError("gradient_checkpointing: the teacher's network has no diffusers UNet to checkpoint "
                         f"({type(module).__name__} of {', '.join(sorted({type(m).__name__ for m in module.children()}))}); "
                         "set gradient_checkpointing=false")
    for unet in unets:
        unet.enable_gradient_checkpointing()


def warmup_steps(config, total_steps: int) -> int:
    """The configured warm-up, capped at 5% of the run [choice, docs/methods.md#networks]."""
    return min(config.warmup, max(1, total_steps // 20)) if config.warmup else 0


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warm-up, then constant or linear decay to 0."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "linear":
        return max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))
    return 1.0


def make_optimizer(params, config, lr: float, total_steps: int, adamw: bool = False):
    """Adam(W) with the config's betas/eps/decay plus its LR schedule."""
    cls = torch.optim.AdamW if adamw else torch.optim.Adam
    opt = cls(params, lr=lr, betas=(config.beta1, config.beta2), eps=config.adam_eps, weight_decay=config.weight_decay)
    warm = warmup_steps(config, total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warm, total_steps, config.lr_schedule))
    return opt, sched


def x_stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The generator output's mean and std, the metrics every method logs (tensors: read at logging time)."""
    x = x.detach().to(torch.promote_types(x.dtype, torch.float32))  # bf16 outputs are summed in fp32
    return {"stats/x_mean": x.mean(), "stats/x_std": x.std()}


class Method(SteppedTask):
    """Shared state handling; subclasses fill `self.nets`, `self.optims` (name -> (optimizer, scheduler))."""

    key: ClassVar[str] = ""
    extra_inputs: ClassVar[tuple[str, ...]] = ()  # constructor inputs beyond teacher and config (see build_method)

    def __init__(self, teacher: Denoiser, config, *, total_steps: int, device="cpu"):
        if total_steps < 1:
            raise ValueError(f"{self.key}: total_steps must be >= 1, got {total_steps}")
        self.config = config
        self.precision = config.precision      # read by core.stepping
        self.grad_clip = config.grad_clip
        self.total_steps = total_steps
        self.device = torch.device(device)
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        # Guidance touches the teacher only, in every method (docs/methods.md#guidance).
        self.teacher_g = CFGDenoiser(self.teacher, config.guidance) if config.guidance != 1.0 else self.teacher
        self.teacher_hash = parameter_hash(self.teacher)
        # Noise in the networks' dtype: float32 normally, float64 when tests run a float64 teacher.
        self.dtype = next(self.teacher.parameters(), torch.empty(0)).dtype
        self.generator = torch.Generator(device=self.device)
        # Text-to-image previews: fixed encoded prompts (one per preview image) and the VAE decode (use_prompts).
        self.preview_cond: TextCond | None = None
        self.decode: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.step = 0
        self.nets: dict[str, nn.Module] = {}
        self.optims: dict[str, tuple] = {}

    # -- helpers for subclasses ----------------------------------------------------------------------------
    def trainable_copy(self) -> Denoiser:
        """A trainable copy of the teacher (student=lora: adapters on the teacher's own weights), gradient-checkpointed
        when the config asks."""
        cfg = self.config
        if cfg.student == "lora":
            copied = lora_copy(self.teacher, cfg.lora_rank, cfg.lora_target_modules)
        else:
            copied = clone_trainable(self.teacher)
        if cfg.gradient_checkpointing:
            enable_checkpointing(copied)
        return copied

    def init_student_and_aux(self, aux: Denoiser | None, gen_updates: int | None = None,
                             aux_updates: int | None = None) -> None:
        """G and A as trainable copies of T (A may be injected by tests), each with its own Adam and schedule.

        A schedule advances once per update of its own network, so its length is that network's number of updates
        in the run (`total_steps` unless given): a method that updates G on every other iteration passes half.
        """
        self.student = self.trainable_copy()
        self.aux = aux if aux is not None else self.trainable_copy()
        self.nets = {"student": self.student, "aux": self.aux}
        self.optims = {
            "gen": make_optimizer(trainable_parameters(self.student), self.config, self.config.lr_gen,
                                  gen_updates or self.total_steps),
            "aux": make_optimizer(trainable_parameters(self.aux), self.config, self.config.lr_aux,
                                  aux_updates or self.total_steps),
        }

    def noise_bank(self, noise: torch.Tensor) -> torch.Tensor:
        """The sample contract accepts [B, ...] or a bank [draws, B, ...]; always return the bank."""
        return noise if noise.ndim > len(self.teacher.data_shape) + 1 else noise[None]

    def ancestral_sample(self, noise, cond, steps, student) -> torch.Tensor:
        """The k-step MMD sampler: conditional re-noising on the uniform grid t_i = 1 - i/k [paper, Alg. 1]."""
        steps = steps or self.config.student_steps
        return ancestral(self.noise_bank(noise), student or self.student, time_grid(self.schedule, steps), cond)

    @property
    def schedule(self):
        return self.teacher.schedule

    def randn(self, shape) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, device=self.device, dtype=self.dtype)

    def batch_size_and_cond(self, batch: dict) -> tuple[int, torch.Tensor | TextCond | None]:
        """(batch size, condition): class ids, encoded prompts (a TextCond) or None; a conditional teacher given no
        condition gets its null one."""
        cond = batch.get("cond")
        if "x" in batch:
            b = batch["x"].shape[0]
        elif cond is not None:
            b = len(cond)
        else:
            b = int(batch["size"])
        if cond is None and (self.teacher.num_classes or self.teacher.takes_prompts):
            cond = self.teacher.null_cond(b, self.device)
        return b, cond

    # -- the contract --------------------------------------------------------------------------------------
    def losses(self, batch: dict) -> Iterator[Update]:
        """Yield an Update per optimizer to step this iteration (each loss is backpropagated and stepped before the
        generator resumes); return the metrics. Never step an optimizer or advance self.step here."""
        raise NotImplementedError

    def sample(self, noise: torch.Tensor, cond=None, steps: int | None = None, student: Denoiser | None = None):
        raise NotImplementedError

    def train_step(self, batch: dict) -> dict[str, float]:
        """One iteration as the loop runs it, metrics as floats plus its wall time (time/step_s)."""
        t0 = time.perf_counter()
        metrics = super().train_step(batch)
        metrics["time/step_s"] = time.perf_counter() - t0
        return metrics

    def ema_source(self) -> nn.Module:
        return self.nets["student"]

    def noise_draws(self, steps: int) -> int:
        return steps

    @torch.no_grad()
    def preview(self, seeds: tuple[int, ...], module: nn.Module) -> torch.Tensor:
        steps = self.config.student_steps
        noise = seeded_noise(seeds, self.teacher.data_shape, self.noise_draws(steps), device=self.device)
        cond = None
        if self.preview_cond is not None:
            cond = self.preview_cond[:len(seeds)]
        elif self.teacher.num_classes:
            cond = torch.tensor([s % self.teacher.num_classes for s in seeds], device=self.device)
        was_training = module.training
        module.eval()
        try:
            x = self.sample(noise, cond, steps, student=module)
        finally:
            module.train(was_training)
        return x if self.decode is None else self.decode(x)

    def use_prompts(self, preview_cond: TextCond, decode: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Previews of a latent text-to-image student: image i draws prompt i of `preview_cond` (at least as many as
        the preview seeds) and is decoded by `decode` (latents -> images in [-1, 1])."""
        if not self.teacher.takes_prompts:
            raise ValueError(f"{self.key}: prompts need a text-to-image teacher")
        self.preview_cond, self.decode = preview_cond.to(self.device), decode

    def state_dict(self) -> dict:
        return {
            "nets": {k: shipped_state(v) for k, v in self.nets.items()},  # a LoRA network: its adapters only
            "optims": {k: {"opt": o.state_dict(), "sched": s.state_dict()} for k, (o, s) in self.optims.items()},
            "step": self.step, "config": self.config.to_dict(), "teacher_hash": self.teacher_hash,
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["teacher_hash"] != self.teacher_hash:
            raise ValueError(f"{self.key}: checkpoint was made with a different teacher (parameter hash mismatch)")
        for k, v in self.nets.items():
            load_shipped_state(v, state["nets"][k])
        for k, (o, s) in self.optims.items():
            o.load_state_dict(state["optims"][k]["opt"])
            s.load_state_dict(state["optims"][k]["sched"])
        self.step = int(state["step"])
        self.load_extra_state(state.get("extra") or {})

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


class OneStepMethod(Method):
    """One-step generators G(xi) = D_eta(xi, t_gen, c), xi ~ N(0, I) fed as the VP-normalised z at log-SNR lambda*.

    Shared by EMD and Diff-Instruct (docs/methods.md#the-denoiser-and-its-conversions); the student and the auxiliary
    score start as the teacher.
    """

    def __init__(self, teacher: Denoiser, config, *, total_steps: int, device="cpu", aux: Denoiser | None = None):
        super().__init__(teacher, config, total_steps=total_steps, device=device)
        if config.student_steps != 1:
            raise ValueError(f"{self.key}: student_steps must be 1 (a one-step method), got {config.student_steps}")
        self.init_student_and_aux(aux)
        self.t_gen = self.schedule.t_from_log_snr(torch.tensor(config.lambda_star, dtype=torch.float64)).clamp(
            max=self.schedule.t_max)

    def generate(self, xi: torch.Tensor, cond, student: Denoiser | None = None) -> torch.Tensor:
        return (student or self.student)(xi, self.t_gen.expand(xi.shape[0]), cond)

    def noise_draws(self, steps: int) -> int:
        return 1

    def sample(self, noise, cond=None, steps=None, student=None):
        if steps not in (None, 1):
            raise ValueError(f"{self.key}: a one-step generator samples with steps = 1, got {steps}")
        xi = self.noise_bank(noise)[0]
        with torch.no_grad():
            return self.generate(xi, cond, student)

    def aux_loss(self, x: torch.Tensor, cond) -> torch.Tensor:
        """Denoising score matching of A on detached generator samples, t ~ U(0.001, t_max), EDM weight [choice]."""
        b = x.shape[0]
        t = uniform_t(b, 1e-3, self.schedule.t_max, self.generator, self.device)
        z_t = marginal_sample(self.schedule, x, t, self.randn(x.shape))
        weight = edm_weight(self.schedule.log_snr(t), self.config.sigma_data)
        return fake_score_loss(self.aux(z_t, t, cond), x, weight)

    def generator_turn(self, xi, t, eps0, cond) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(L_G, x = G(.) with grad, method metrics) for one generator update; defined by each method."""
        raise NotImplementedError

    def losses(self, batch: dict) -> Iterator[Update]:
        """TTUR: a generator update every `ttur_ratio`-th iteration, A on detached samples every iteration.

        Randomness order: xi; on generator turns t and eps_0 (then the method's own draws); then A's t and noise.
        """
        b, cond = self.batch_size_and_cond(batch)
        xi = self.randn((b, *self.teacher.data_shape))
        metrics: dict = {}
        if self.step % self.config.ttur_ratio == 0:
            t = uniform_t(b, self.config.t_lo, self.config.t_hi, self.generator, self.device)
            loss, x, extra = self.generator_turn(xi, t, self.randn(xi.shape), cond)
            metrics.update(extra)
            metrics["loss/gen"] = loss.detach()
            yield Update("gen", loss)
        else:
            with torch.no_grad():
                x = self.generate(xi, cond)
        loss_aux = self.aux_loss(x.detach(), cond)
        metrics["loss/aux"] = loss_aux.detach()
        yield Update("aux", loss_aux)
        metrics.update(x_stats(x))
        return metrics
