"""Per-example time samplers and loss weights (docs/methods.md#time-sampling-and-weights). Samplers return float64 t
of shape [n]."""

from __future__ import annotations

import torch

from core.losses import dmd_normaliser
from core.schedules import VPSchedule


def uniform_t(n: int, lo: float, hi: float, generator: torch.Generator, device="cpu") -> torch.Tensor:
    """t ~ U(lo, hi) per example."""
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    return lo + (hi - lo) * u


def karras_t(n: int, schedule: VPSchedule, sigma_min: float, sigma_max: float, rho: float,
             generator: torch.Generator, device="cpu") -> torch.Tensor:
    """EDM's sampling-schedule density: sigma_bar = (smax^(1/rho) + u (smin^(1/rho) - smax^(1/rho)))^rho, mapped to t.

    Clamped to the times the schedule can be queried at (eps-networks need alpha > 0).
    """
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    inv = 1.0 / rho
    sigma_bar = (sigma_max**inv + u * (sigma_min**inv - sigma_max**inv)) ** rho
    t = schedule.t_from_log_snr(-2.0 * torch.log(sigma_bar))
    return t.clamp(min=1e-6, max=schedule.t_max)


def edm_weight(log_snr: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """w_edm(lambda) = (sigma_bar^2 + sigma_d^2) / (sigma_bar sigma_d)^2 = e^lambda + 1/sigma_d^2, in float64."""
    return torch.exp(log_snr.double()) + 1.0 / sigma_data**2


def mmd_weighting(config) -> str:
    """"auto": w_edm for k >= 4, flat for k <= 2 (the EDM weight destabilises few-step training) [paper]."""
    if config.weighting != "auto":
        return config.weighting
    return "edm" if config.student_steps >= 4 else "unit"


def mmd_weight(kind: str, schedule, s, sigma_data: float, x_tilde, x_teacher) -> torch.Tensor:
    """w(s) per example, detached, float64."""
    if kind == "edm":
        return edm_weight(schedule.log_snr(s), sigma_data)
    if kind == "unit":
        return torch.ones_like(s)
    if kind == "adaptive":  # DMD's normaliser on the teacher's mean [choice]
        return dmd_normaliser(x_tilde, x_teacher).double()
    raise ValueError(f"mmd: weighting must be one of auto, edm, unit, adaptive, got {kind!r}")
