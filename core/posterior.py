"""The forward-process posterior q(z_s | z_t, x) for 0 <= s < t (docs/methods.md#posterior), in float64.

Stable form: with kappa = exp(lambda_t - lambda_s) in [0, 1),
  mean = c_z z_t + c_x x,  c_z = alpha_t sigma_s^2 / (alpha_s sigma_t^2),  c_x = alpha_s (1 - kappa),
  var  = sigma_s^2 (1 - kappa),  1 - kappa = -expm1(lambda_t - lambda_s).
Every multistep sampler and every training step that re-noises calls this one function.
"""

from __future__ import annotations

import torch

from core.schedules import VPSchedule


def posterior_coefficients(schedule: VPSchedule, s, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_z, c_x, var) of q(z_s | z_t, x) in float64; s = 0 gives (0, 1, 0) and t = 1 gives c_z = 0."""
    s = torch.as_tensor(s, dtype=torch.float64)
    t = torch.as_tensor(t, dtype=torch.float64)
    alpha_s, sigma_s = schedule.alpha(s), schedule.sigma(s)
    alpha_t, sigma_t = schedule.alpha(t), schedule.sigma(t)
    one_minus_kappa = -torch.expm1(schedule.log_snr(t) - schedule.log_snr(s))
    # At s = 0, sigma_s = 0 and the ratio is exactly 0; at s = t the (rounded) levels coincide and c_z = 1.
    c_z = alpha_t * sigma_s**2 / (alpha_s * sigma_t**2)
    c_x = alpha_s * one_minus_kappa
    var = sigma_s**2 * one_minus_kappa
    return c_z, c_x, var


def _per_example(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or per-example [B] coefficient against a [B, ...] tensor, cast once."""
    coef = coef.to(like.dtype)
    return coef.reshape(coef.shape + (1,) * (like.ndim - coef.ndim)) if coef.ndim else coef


def posterior_sample(schedule: VPSchedule, z_t, x, s, t, noise) -> torch.Tensor:
    """z_s ~ q(z_s | z_t, x) driven by the given standard-normal `noise` (conditional re-noising)."""
    c_z, c_x, var = posterior_coefficients(schedule, s, t)
    return _per_example(c_z, z_t) * z_t + _per_example(c_x, x) * x + _per_example(var.sqrt(), noise) * noise


def marginal_sample(schedule: VPSchedule, x, t, noise) -> torch.Tensor:
    """z_t ~ q(z_t | x) = N(alpha_t x, sigma_t^2 I) (forward noising; DMD2's fresh-noise re-noising)."""
    return _per_example(schedule.alpha(t), x) * x + _per_example(schedule.sigma(t), noise) * noise
