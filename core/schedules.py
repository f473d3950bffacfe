"""VP noise schedules at continuous time t in [0, 1] (docs/methods.md#schedules).

z_t = alpha_t x + sigma_t eps with alpha_t^2 + sigma_t^2 = 1; log-SNR lambda_t = log(alpha_t^2 / sigma_t^2)
decreases with t. Every coefficient is computed in float64; callers cast once at the network boundary.
"""

from __future__ import annotations

import math

import torch

_F64 = torch.float64


def _as_t(t: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(t, dtype=_F64)


class VPSchedule:
    """Base class: subclasses define alpha(t) and the network's time input; the rest follows."""

    t_max = 1.0  # the largest t a network may be queried at (eps-networks need alpha > 0)

    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        # sqrt(1 - alpha^2) loses precision near t = 0; subclasses override with a closed form where they can.
        return torch.sqrt((1.0 - self.alpha(t) ** 2).clamp_min(0.0))

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        a, s = self.alpha(t), self.sigma(t)
        return 2.0 * (torch.log(a) - torch.log(s))

    def t_from_log_snr(self, lam: torch.Tensor | float) -> torch.Tensor:
        raise NotImplementedError

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep value handed to the network for time t."""
        raise NotImplementedError


class CosineSchedule(VPSchedule):
    """alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2), so sigma_t / alpha_t = tan(pi t / 2) [choice,
    docs/methods.md#schedules]."""

    def __init__(self, t_max: float = 1.0, timestep_scale: float = 1000.0):
        if not 0.0 < t_max <= 1.0:
            raise ValueError(f"cosine schedule: t_max must be in (0, 1], got {t_max}")
        self.t_max = t_max
        self.timestep_scale = timestep_scale  # networks see t * scale, the range diffusers' embeddings expect

    def alpha(self, t):
        t = _as_t(t)
        # cos(pi/2) is 6e-17 in floating point; make t = 1 exactly pure noise.
        return torch.where(t >= 1.0, torch.zeros_like(t), torch.cos(0.5 * math.pi * t))

    def sigma(self, t):
        return torch.sin(0.5 * math.pi * _as_t(t))

    def log_snr(self, t):
        t = _as_t(t)
        # lambda = -2 log tan(pi t / 2): exact at both ends (+inf at 0, -inf at 1).
        return torch.where(t >= 1.0, torch.full_like(t, -math.inf), -2.0 * torch.log(torch.tan(0.5 * math.pi * t)))

    def t_from_log_snr(self, lam):
        return (2.0 / math.pi) * torch.atan(torch.exp(-0.5 * _as_t(lam)))

    def model_time(self, t):
        return t * self.timestep_scale


class DiscreteSchedule(VPSchedule):
    """A DDPM-style schedule given by `alphas_cumprod` (N entries), mapped to t = i / (N - 1).

    t is rounded to the nearest trained index, and that index's (alpha, sigma) is used both for noising and
    for the network call, so a model is never queried at a level other than the one its input was noised at.
    """

    def __init__(self, alphas_cumprod):
        acp = torch.as_tensor(alphas_cumprod, dtype=_F64).flatten()
        if acp.numel() < 2:
            raise ValueError("discrete schedule: alphas_cumprod needs at least 2 entries")
        if not bool(((acp > 0) & (acp < 1)).all()) or not bool((acp[1:] < acp[:-1]).all()):
            raise ValueError("discrete schedule: alphas_cumprod must lie in (0, 1) and strictly decrease")
        self.alphas_cumprod = acp
        self.num_steps = acp.numel()
        self._log_snr = torch.log(acp) - torch.log1p(-acp)

    def index(self, t) -> torch.Tensor:
        return torch.round(_as_t(t).clamp(0.0, 1.0) * (self.num_steps - 1)).long()

    def alpha(self, t):
        return self.alphas_cumprod[self.index(t)].sqrt()

    def sigma(self, t):
        return (1.0 - self.alphas_cumprod[self.index(t)]).sqrt()

    def log_snr(self, t):
        return self._log_snr[self.index(t)]

    def t_from_log_snr(self, lam):
        # Nearest trained level in log-SNR; _log_snr decreases, so search on its negation.
        lam = _as_t(lam)
        neg = -self._log_snr
        hi = torch.searchsorted(neg, -lam.contiguous()).clamp(1, self.num_steps - 1)
        lo = hi - 1
        pick_lo = (lam - self._log_snr[lo]).abs() <= (lam - self._log_snr[hi]).abs()
        return torch.where(pick_lo, lo, hi).to(_F64) / (self.num_steps - 1)

    def model_time(self, t):
        return self.index(t)


def time_grid(schedule: VPSchedule, steps: int) -> torch.Tensor:
    """Descending float64 times t_max = t_0 > ... > t_steps = 0 for a `steps`-step sampler: t_i = t_max (1 - i/k).

    A discrete schedule of N levels uses the trained indices (N - 1) - floor(i N / k) instead, the grid of diffusers'
    LCMScheduler (over all N levels) and, where k divides N, of "trailing" spacing: 4 steps of 1,000 are 999, 749, 499,
    249 [paper, DMD2]. Exported students then run in diffusers on exactly the levels they were trained at
    (docs/methods.md#export); rounding t_max (1 - i/k) instead would give 500 and 250.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if isinstance(schedule, DiscreteSchedule):
        n = schedule.num_steps
        index = (n - 1) - torch.div(torch.arange(steps, dtype=torch.long) * n, steps, rounding_mode="floor")
        return torch.cat([index.to(_F64) / (n - 1), torch.zeros(1, dtype=_F64)])
    return torch.linspace(schedule.t_max, 0.0, steps + 1, dtype=_F64)
