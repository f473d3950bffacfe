"""The one denoiser interface D(z_t, t, cond) -> x0_hat and its adapters (docs/methods.md#the-denoiser-and-its-conversions,
docs/methods.md#guidance).

Every teacher, student and auxiliary network is used through `Denoiser.forward(z_t, t, cond)`: z_t is the
VP-normalised noisy input [B, ...], t a per-example float64 time [B] in [0, 1], cond a class id tensor [B]
(or None for unconditional use). Class-conditional models reserve id `num_classes` as the null class.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from core.schedules import VPSchedule
from core.text_cond import cat_cond

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def bcast(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-example float64 coefficient [B] -> broadcastable against `like`, cast once to its dtype."""
    coef = coef.to(device=like.device, dtype=like.dtype)
    return coef.reshape(coef.shape + (1,) * (like.ndim - coef.ndim))


# -- Parametrisation conversions (coefficients in float64) ------------------------------------------

def x_from_eps(z_t, eps, alpha, sigma):
    return (z_t - bcast(sigma, z_t) * eps) / bcast(alpha, z_t)


def eps_from_x(z_t, x, alpha, sigma):
    return (z_t - bcast(alpha, z_t) * x) / bcast(sigma, z_t)


def x_from_v(z_t, v, alpha, sigma):
    return bcast(alpha, z_t) * z_t - bcast(sigma, z_t) * v


def v_from_x(z_t, x, alpha, sigma):
    eps = eps_from_x(z_t, x, alpha, sigma)
    return bcast(alpha, z_t) * eps - bcast(sigma, z_t) * x


def x_from_flow(z_t, u, alpha, sigma):
    """Rectified flow y = (1 - tau) x + tau eps with velocity u = eps - x: tau = sigma/(alpha+sigma), y = z/(alpha+sigma)."""
    tau = sigma / (alpha + sigma)
    return z_t / bcast(alpha + sigma, z_t) - bcast(tau, z_t) * u


def to_x(prediction_type: str, z_t, out, alpha, sigma):
    if prediction_type == "epsilon":
        return x_from_eps(z_t, out, alpha, sigma)
    if prediction_type == "v_prediction":
        return x_from_v(z_t, out, alpha, sigma)
    if prediction_type == "sample":
        return out
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def from_x(prediction_type: str, z_t, x, alpha, sigma):
    """The network target for a given clean x (used by the denoising loss)."""
    if prediction_type == "epsilon":
        return eps_from_x(z_t, x, alpha, sigma)
    if prediction_type == "v_prediction":
        return v_from_x(z_t, x, alpha, sigma)
    if prediction_type == "sample":
        return x
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def score(denoiser: Denoiser, z_t, t, cond=None):
    """grad log p_t(z_t) = (alpha_t D - z_t) / sigma_t^2."""
    alpha, sigma = denoiser.schedule.alpha(t), denoiser.schedule.sigma(t)
    return (bcast(alpha, z_t) * denoiser(z_t, t, cond) - z_t) / bcast(sigma**2, z_t)


# -- The interface -----------------------------------------------------------------------------------------

class Denoiser(nn.Module):
    """Base class: x-prediction D(z_t, t, cond) on a VP schedule."""

    takes_prompts = False  # True: cond is a core.text_cond.TextCond and null_cond the empty prompt's encoding

    def __init__(self, schedule: VPSchedule, data_shape: tuple[int, ...], num_classes: int = 0):
        super().__init__()
        self.schedule = schedule
        self.data_shape = tuple(data_shape)
        self.num_classes = num_classes  # 0: unconditional; else ids 0..n-1, and n is the null class

    def null_cond(self, batch: int, device=None) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)

    def _cond_or_null(self, cond, batch, device):
        return self.null_cond(batch, device) if cond is None else cond

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class NetworkDenoiser(Denoiser):
    """Wraps a network with native output `prediction_type` ("epsilon", "v_prediction" or "sample").

    `time_input` picks what the network sees as time: "model_time" (the schedule's timestep, e.g. 1000 t or
    a discrete index, as diffusers UNets expect) or "log_snr" (clamped, for the small MLPs).
    """

    def __init__(self, net: nn.Module, schedule: VPSchedule, prediction_type: str, data_shape,
                 num_classes: int = 0, time_input: str = "model_time"):
        super().__init__(schedule, data_shape, num_classes)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if time_input not in ("model_time", "log_snr"):
            raise ValueError(f"time_input must be 'model_time' or 'log_snr', got {time_input!r}")
        self.net = net
        self.prediction_type = prediction_type
        self.time_input = time_input

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        if self.time_input == "log_snr":
            return self.schedule.log_snr(t).clamp(-30.0, 30.0)
        return self.schedule.model_time(t)

    def raw(self, z_t, t, cond=None) -> torch.Tensor:
        """The network's native output (what the denoising loss regresses)."""
        t = torch.as_tensor(t, dtype=torch.float64).expand(z_t.shape[0])
        time = self.network_time(t).to(z_t.device)
        if time.is_floating_point():
            time = time.to(z_t.dtype)
        return self.net(z_t, time, self._cond_or_null(cond, z_t.shape[0], z_t.device))

    def forward(self, z_t, t, cond=None):
        t = torch.as_tensor(t, dtype=torch.float64).expand(z_t.shape[0])
        out = self.raw(z_t, t, cond)
        return to_x(self.prediction_type, z_t, out, self.schedule.alpha(t), self.schedule.sigma(t))


class UNetCall(nn.Module):
    """Adapts a diffusers UNet2DModel to net(z, time, cond): class labels only if it has a class embedding.

    The studio's own UNets keep their null class last (id num_classes). An imported UNet may reserve another label
    `null_class` for it; the studio then numbers the model's other labels 0..n-1 in order and its null id n maps to
    `null_class`, so every caller keeps using num_classes as the null condition.
    """

    def __init__(self, unet: nn.Module, null_class: int | None = None):
        super().__init__()
        self.unet = unet
        self.null_class = null_class

    def labels(self, cond: torch.Tensor) -> torch.Tensor:
        """Studio class ids -> the model's labels (identity unless the null label is not the last one)."""
        if self.null_class is None:
            return cond
        null_id = self.unet.config.num_class_embeds - 1
        return torch.where(cond >= null_id, torch.full_like(cond, self.null_class), cond + (cond >= self.null_class).long())

    def forward(self, z, time, cond):
        labels = self.labels(cond) if getattr(self.unet.config, "num_class_embeds", None) else None
        return self.unet(z, time, class_labels=labels).sample


def diffusers_denoiser(unet: nn.Module, schedule: VPSchedule, prediction_type: str, num_classes: int = 0,
                       null_class: int | None = None) -> NetworkDenoiser:
    cfg = unet.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) \
        else (cfg.in_channels, *cfg.sample_size)
    return NetworkDenoiser(UNetCall(unet, null_class), schedule, prediction_type, shape, num_classes,
                           time_input="model_time")


class VEDenoiser(Denoiser):
    """EDM/VE denoiser D_ve(y, sigma_bar, cond) with y = x + sigma_bar n: D(z_t, t) = D_ve(z_t / alpha_t, sigma_bar_t).

    EDM's preconditioning (c_skip, c_out, c_in, c_noise) stays inside D_ve.
    """

    def __init__(self, ve_fn: Callable, schedule: VPSchedule, data_shape, num_classes: int = 0):
        super().__init__(schedule, data_shape, num_classes)
        self.ve_fn = ve_fn

    def forward(self, z_t, t, cond=None):
        t = torch.as_tensor(t, dtype=torch.float64).expand(z_t.shape[0])
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        sigma_bar = (sigma / alpha).to(device=z_t.device, dtype=z_t.dtype)
        return self.ve_fn(z_t / bcast(alpha, z_t), sigma_bar, self._cond_or_null(cond, z_t.shape[0], z_t.device))


class CFGDenoiser(Denoiser):
    """Classifier-free guidance x_g = x_u + w (x_c - x_u) (docs/methods.md#guidance): w = 1 conditional, w = 0 unconditional.

    The weights sum to one, so applying it in x-space equals applying it in eps- or v-space.
    A guided call costs 2 NFE; w = 1 and unconditional calls cost 1.
    """

    def __init__(self, base: Denoiser, w: float):
        super().__init__(base.schedule, base.data_shape, base.num_classes)
        if base.num_classes == 0 and not base.takes_prompts and w != 1.0:
            raise ValueError(f"guidance: w = {w} needs a class-conditional model")
        self.base = base
        self.w = float(w)

    def forward(self, z_t, t, cond=None):
        if cond is None or self.w == 1.0:
            return self.base(z_t, t, cond)
        b = z_t.shape[0]
        t = torch.as_tensor(t, dtype=torch.float64).expand(b)
        # One batched call for both branches.
        both = self.base(torch.cat([z_t, z_t]), torch.cat([t, t]), cat_cond([cond, self.base.null_cond(b, cond.device)]))
        x_c, x_u = both[:b], both[b:]
        return x_u + self.w * (x_c - x_u)


def nfe_per_call(denoiser: Denoiser, conditional: bool) -> int:
    """Network evaluations per denoiser call (a guided call costs 2)."""
    if isinstance(denoiser, CFGDenoiser) and conditional and denoiser.w != 1.0:
        return 2
    return 1
