"""Teacher training: the denoising loss in the network's native parametrisation, run by the one loop."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from core.denoisers import NetworkDenoiser, from_x
from core.noise import seeded_noise
from core.posterior import marginal_sample
from core.samplers import sample
from core.specs import TrainConfig
from core.stepping import SteppedTask, Update

T_MIN = 1e-3  # why: at t = 0 sigma = 0 and the eps/v targets carry no information


def denoising_loss(denoiser: NetworkDenoiser, x: torch.Tensor, cond, t: torch.Tensor, noise: torch.Tensor):
    """Per-example MSE between the network's native output and its target at z_t = alpha_t x + sigma_t eps."""
    assert x.shape == noise.shape, f"x {tuple(x.shape)} and noise {tuple(noise.shape)} must match"
    schedule = denoiser.schedule
    z_t = marginal_sample(schedule, x, t, noise)
    target = from_x(denoiser.prediction_type, z_t, x, schedule.alpha(t), schedule.sigma(t))
    out = denoiser.raw(z_t, t, cond)
    return (out - target).pow(2).flatten(1).mean(1)


def training_times(n: int, generator: torch.Generator, t_max: float, shift: float = 1.0, device="cpu") -> torch.Tensor:
    """n training times in [T_MIN, t_max] (float64): u uniform, shifted to s u / (1 + (s - 1) u) (SD3's timestep
    shift), which for s > 1 draws high noise levels more often: with s = 3, a quarter of draws land in the top tenth of
    [0, 1] instead of a tenth. Why: there the image's layout is decided, and an epsilon or v loss under uniform draws
    barely trains it (the shapes teacher learned colours and shapes but not which side an object goes on)."""
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if shift != 1.0:  # at s = 1 the map is the identity; skipping it keeps earlier teachers' runs bit-exact
        u = shift * u / (1 + (shift - 1) * u)
    return T_MIN + (t_max - T_MIN) * u


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class DenoiserTrainer(SteppedTask):
    """A `core.train.Trainable` that fits a NetworkDenoiser to data by denoising score matching."""

    def __init__(self, denoiser: NetworkDenoiser, config: TrainConfig, device="cpu", preview_steps: int = 25):
        self.denoiser = denoiser.to(device)
        self.config = config
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.optimizer = torch.optim.Adam(denoiser.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, config.warmup, config.iterations))
        self.preview_steps = preview_steps
        self.optims = {"net": (self.optimizer, self.scheduler)}   # stepped by core.stepping
        self.grad_clip, self.precision, self.step = config.grad_clip, config.precision, 0

    def losses(self, batch: dict) -> Iterator[Update]:
        x, cond = batch["x"], batch.get("cond")
        b = x.shape[0]
        gen = self.generator
        # Randomness in a fixed order: t, noise, label dropout.
        t = training_times(b, gen, self.denoiser.schedule.t_max, self.config.t_shift, self.device)
        noise = torch.randn(x.shape, generator=gen, device=self.device, dtype=x.dtype)
        if cond is not None and self.denoiser.num_classes:
            drop = torch.rand(b, generator=gen, device=self.device) < self.config.cond_drop
            cond = torch.where(drop, torch.full_like(cond, self.denoiser.num_classes), cond)
        self.denoiser.train()
        loss = denoising_loss(self.denoiser, x, cond, t, noise).mean()
        yield Update("net", loss)
        return {"loss/denoise": loss.detach()}

    def state_dict(self) -> dict:
        return {"net": self.denoiser.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.denoiser.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def ema_source(self) -> nn.Module:
        return self.denoiser.net

    @torch.no_grad()
    def preview(self, seeds: tuple[int, ...], module: nn.Module) -> torch.Tensor:
        """Samples at fixed seeds from the given network (the EMA copy during training)."""
        previewer = NetworkDenoiser(module, self.denoiser.schedule, self.denoiser.prediction_type,
                                    self.denoiser.data_shape, self.denoiser.num_classes,
                                    self.denoiser.time_input).eval()
        noise = seeded_noise(seeds, self.denoiser.data_shape, device=self.device)
        cond = None
        if self.denoiser.num_classes:
            cond = torch.tensor([s % self.denoiser.num_classes for s in seeds], device=self.device)
        return sample(previewer, noise, self.preview_steps, cond)
