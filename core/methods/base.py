"""The method plug-in contract (docs/methods.md#the-plug-in-contract) and the plumbing every method shares.

A method is built from (teacher, config, total_steps, device); it copies the teacher into its own networks, owns
its optimizers and LR schedules, and draws all randomness from `self.generator`, which the training loop
re-seeds every step. Subclasses define `train_step(batch)` and `sample(noise, cond, steps)`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from core.denoisers import CFGDenoiser, Denoiser
from core.losses import fake_score_loss
from core.nets import parameter_hash
from core.noise import seeded_noise
from core.posterior import marginal_sample
from core.samplers import ancestral
from core.schedules import time_grid
from core.text_cond import TextCond
from core.time_sampling import edm_weight, uniform_t


def clone_trainable(denoiser: Denoiser) -> Denoiser:
    """A trainable copy of a (frozen) denoiser: the student and auxiliary networks start as the teacher [paper]."""
    if not any(True for _ in denoiser.parameters()):
        raise ValueError("teacher: an analytic teacher has no network to copy; distil a network teacher "
                         "(e.g. toy2d-ring instead of toy2d-ring-gmm)")
    return copy.deepcopy(denoiser).requires_grad_(True).train()


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


def optimizer_step(loss: torch.Tensor, opt, sched, params, clip: float) -> float:
    """Backward, clip, step, schedule; gradients are released (set to None) afterwards. Returns the grad norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)


class Method:
    """Shared state handling; subclasses fill `self.nets`, `self.optims` (name -> (optimizer, scheduler))."""

    key: ClassVar[str] = ""
    extra_inputs: ClassVar[tuple[str, ...]] = ()  # constructor inputs beyond teacher and config (see build_method)

    def __init__(self, teacher: Denoiser, config, *, total_steps: int, device="cpu"):
        if total_steps < 1:
            raise ValueError(f"{self.key}: total_steps must be >= 1, got {total_steps}")
        self.config = config
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
    def init_student_and_aux(self, aux: Denoiser | None, gen_updates: int | None = None,
                             aux_updates: int | None = None) -> None:
        """G and A as trainable copies of T (A may be injected by tests), each with its own Adam and schedule.

        A schedule advances once per update of its own network, so its length is that network's number of updates
        in the run (`total_steps` unless given): a method that updates G on every other iteration passes half.
        """
        self.student = clone_trainable(self.teacher)
        self.aux = aux if aux is not None else clone_trainable(self.teacher)
        self.nets = {"student": self.student, "aux": self.aux}
        self.optims = {
            "gen": make_optimizer(self.student.parameters(), self.config, self.config.lr_gen,
                                  gen_updates or self.total_steps),
            "aux": make_optimizer(self.aux.parameters(), self.config, self.config.lr_aux,
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
    def train_step(self, batch: dict) -> dict[str, float]:
        raise NotImplementedError

    def sample(self, noise: torch.Tensor, cond=None, steps: int | None = None, student: Denoiser | None = None):
        raise NotImplementedError

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
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "optims": {k: {"opt": o.state_dict(), "sched": s.state_dict()} for k, (o, s) in self.optims.items()},
            "step": self.step, "config": self.config.to_dict(), "teacher_hash": self.teacher_hash,
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["teacher_hash"] != self.teacher_hash:
            raise ValueError(f"{self.key}: checkpoint was made with a different teacher (parameter hash mismatch)")
        for k, v in self.nets.items():
            v.load_state_dict(state["nets"][k])
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

    def aux_update(self, x: torch.Tensor, cond) -> dict[str, float]:
        """Denoising score matching of A on detached generator samples, t ~ U(0.001, t_max), EDM weight [choice]."""
        b = x.shape[0]
        t = uniform_t(b, 1e-3, self.schedule.t_max, self.generator, self.device)
        z_t = marginal_sample(self.schedule, x, t, self.randn(x.shape))
        weight = edm_weight(self.schedule.log_snr(t), self.config.sigma_data)
        loss = fake_score_loss(self.aux(z_t, t, cond), x, weight)
        opt, sched = self.optims["aux"]
        lr = sched.get_last_lr()[0]
        norm = optimizer_step(loss, opt, sched, list(self.aux.parameters()), self.config.grad_clip)
        return {"loss/aux": loss.item(), "grad_norm/aux": norm, "lr/aux": lr}

    def gen_update(self, loss: torch.Tensor) -> dict[str, float]:
        opt, sched = self.optims["gen"]
        lr = sched.get_last_lr()[0]
        norm = optimizer_step(loss, opt, sched, list(self.student.parameters()), self.config.grad_clip)
        return {"loss/gen": loss.item(), "grad_norm/gen": norm, "lr/gen": lr}

    def generator_turn(self, xi, t, eps0, cond) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """(L_G, x = G(.) with grad, method metrics) for one generator update; defined by each method."""
        raise NotImplementedError

    def train_step(self, batch: dict) -> dict[str, float]:
        """TTUR: a generator update every `ttur_ratio`-th iteration, A on detached samples every iteration.

        Randomness order: xi; on generator turns t and eps_0 (then the method's own draws); then A's t and noise.
        """
        t0 = time.perf_counter()
        b, cond = self.batch_size_and_cond(batch)
        xi = self.randn((b, *self.teacher.data_shape))
        metrics: dict[str, float] = {}
        if self.step % self.config.ttur_ratio == 0:
            t = uniform_t(b, self.config.t_lo, self.config.t_hi, self.generator, self.device)
            loss, x, extra = self.generator_turn(xi, t, self.randn(xi.shape), cond)
            metrics.update(self.gen_update(loss))
            metrics.update(extra)
        else:
            with torch.no_grad():
                x = self.generate(xi, cond)
        metrics.update(self.aux_update(x.detach(), cond))
        metrics.update({"stats/x_mean": float(x.detach().mean()), "stats/x_std": float(x.detach().std()),
                        "time/step_s": time.perf_counter() - t0})
        self.step += 1
        return metrics
