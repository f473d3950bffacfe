"""Samplers: pure functions with one signature (noise, denoiser, timesteps, cond, callback) -> x.

`noise` is a bank [draws, B, ...] from `core.noise.seeded_noise`: draw 0 is the initial latent z_{t_0},
draw i (i >= 1) the standard-normal noise of the i-th re-noising. `timesteps` descends from t_0 to 0.
The callback receives {"step", "t", "z_t", "x0_hat"} after every denoiser call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.denoisers import Denoiser, bcast, eps_from_x
from core.posterior import marginal_sample, posterior_coefficients, posterior_sample
from core.schedules import VPSchedule, time_grid

Callback = Callable[[dict], None] | None


def _check(noise: torch.Tensor, timesteps: torch.Tensor, needs_draws: int):
    if noise.shape[0] < needs_draws:
        raise ValueError(f"sampler: noise bank has {noise.shape[0]} draws, needs {needs_draws}")
    if timesteps.ndim != 1 or timesteps.numel() < 2 or not bool((timesteps[1:] < timesteps[:-1]).all()):
        raise ValueError("sampler: timesteps must be a strictly decreasing 1-D tensor with >= 2 entries")


def ddim_step(schedule: VPSchedule, z_t, x0_hat, s, t, eta: float, noise) -> torch.Tensor:
    """One DDIM update t -> s; eta = 1 equals the ancestral posterior draw q(z_s | z_t, x0_hat)."""
    if eta == 0.0:
        eps_hat = eps_from_x(z_t, x0_hat, schedule.alpha(t), schedule.sigma(t))
        return bcast(schedule.alpha(s), z_t) * x0_hat + bcast(schedule.sigma(s), z_t) * eps_hat
    _, _, var = posterior_coefficients(schedule, s, t)
    stoch = eta**2 * var
    eps_hat = eps_from_x(z_t, x0_hat, schedule.alpha(t), schedule.sigma(t))
    det = (schedule.sigma(s) ** 2 - stoch).clamp_min(0.0).sqrt()
    return bcast(schedule.alpha(s), z_t) * x0_hat + bcast(det, z_t) * eps_hat + bcast(stoch.sqrt(), z_t) * noise


@torch.no_grad()
def ddim(noise, denoiser: Denoiser, timesteps, cond=None, callback: Callback = None, eta: float = 0.0):
    """DDIM (Song et al. 2021) with any number of steps; eta > 0 uses one noise draw per intermediate step."""
    _check(noise, timesteps, 1 if eta == 0.0 else timesteps.numel() - 1)
    z = noise[0]
    n = timesteps.numel() - 1
    x0_hat = z
    for i in range(n):
        t, s = timesteps[i], timesteps[i + 1]
        tb = t.expand(z.shape[0])
        x0_hat = denoiser(z, tb, cond)
        if callback is not None:
            callback({"step": i, "t": float(t), "z_t": z, "x0_hat": x0_hat})
        if i + 1 < n:
            z = ddim_step(denoiser.schedule, z, x0_hat, s.expand(z.shape[0]), tb, eta,
                          noise[i + 1] if eta else None)
    return x0_hat


def _renoising(noise, denoiser: Denoiser, timesteps, cond, callback: Callback, renoise) -> torch.Tensor:
    """The multistep loop of ancestral-type samplers: x0_hat = D(z_t, t); z_s = renoise(z_t, x0_hat, s, t, n)."""
    n = timesteps.numel() - 1
    _check(noise, timesteps, n)
    z = noise[0]
    x0_hat = z
    for i in range(n):
        t, s = timesteps[i].expand(z.shape[0]), timesteps[i + 1].expand(z.shape[0])
        x0_hat = denoiser(z, t, cond)
        if callback is not None:
            callback({"step": i, "t": float(timesteps[i]), "z_t": z, "x0_hat": x0_hat})
        if i + 1 < n:
            z = renoise(z, x0_hat, s, t, noise[i + 1])
    return x0_hat


@torch.no_grad()
def ancestral(noise, denoiser: Denoiser, timesteps, cond=None, callback: Callback = None):
    """Ancestral sampling: z_s ~ q(z_s | z_t, x0_hat) (conditional re-noising, docs/methods.md#posterior); returns the
    last x0_hat."""
    return _renoising(noise, denoiser, timesteps, cond, callback,
                      lambda z, x0, s, t, eps: posterior_sample(denoiser.schedule, z, x0, s, t, eps))


@torch.no_grad()
def marginal(noise, denoiser: Denoiser, timesteps, cond=None, callback: Callback = None):
    """Fresh-noise re-noising z_s = alpha_s x0_hat + sigma_s eps (DMD2/LCM multistep students); returns the last x0_hat."""
    return _renoising(noise, denoiser, timesteps, cond, callback,
                      lambda z, x0, s, t, eps: marginal_sample(denoiser.schedule, x0, s, eps))


SAMPLERS = {"ddim": ddim, "ancestral": ancestral, "marginal": marginal}


def noise_draws(sampler: str, steps: int, eta: float = 0.0) -> int:
    """How many noise draws per sample a sampler needs for `steps` steps."""
    if sampler == "ddim" and eta == 0.0:
        return 1
    return max(steps, 1)


def sample(denoiser: Denoiser, noise: torch.Tensor, steps: int, cond=None, sampler: str = "ddim",
           eta: float = 0.0, callback: Callback = None) -> torch.Tensor:
    """Run a named sampler on the schedule's uniform time grid."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    timesteps = time_grid(denoiser.schedule, steps)
    if sampler == "ddim":
        return ddim(noise, denoiser, timesteps, cond, callback, eta=eta)
    return SAMPLERS[sampler](noise, denoiser, timesteps, cond, callback)
