"""Per-example time samplers (METHODS.md §2.5). All return float64 t of shape [n]."""

from __future__ import annotations

import torch

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
