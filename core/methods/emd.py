"""EM Distillation (Xie et al., "EM Distillation for One-step Diffusion Models", arXiv 2405.16852).

Maximum-likelihood distillation of a one-step generator x = G(xi), as EM over xi (docs/methods.md#emd):
- E-step: K steps of Langevin dynamics on (eps, xi) targeting pi_t(z_t, xi) = p_T,t(z_t) p_G,t(xi | z_t), with
  z_t = alpha_t G(xi) + sigma_t eps and Delta = (alpha_t / sigma_t^2)(T_g(z_t) - A(z_t)):
      grad_eps log pi = sigma_t Delta - eps,   grad_xi log pi = alpha_t J_G^T Delta - xi.
- Noise cancellation: eps = d + zeta, the drift d and the noise zeta kept in separate buffers (docs/methods.md#noise-cancellation).
- M-step: L_G = -w(t) (alpha_t / sigma_t) <G(sg xi_K), sg eps_tilde>; A learns the student's score by DSM.
No reference code exists; every numeric default is [choice] and covered by the tests of docs/methods.md#emd-tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from core.denoisers import bcast
from core.losses import inner, vsd_weight
from core.method_specs import EMDConfig
from core.methods.base import OneStepMethod


@dataclass
class Chain:
    """The state after the E-step."""

    xi: torch.Tensor          # xi_K
    drift: torch.Tensor       # d_K
    noise: torch.Tensor       # zeta_K
    eps0: torch.Tensor        # the chain's initial eps
    weight: torch.Tensor      # w(t) per example, from the initial state


def langevin(generate: Callable, teacher_g, aux, schedule, xi, eps0, t, cond, *, steps: int, gamma_eps: float,
             gamma_z: float, weighting: str, randn: Callable) -> Chain:
    """The E-step: `steps` Langevin updates of (eps, xi); u <- u + gamma grad log pi + sqrt(2 gamma) n.

    Randomness order per step: n_eps, then n_xi (only when gamma_z > 0). No parameter gradients are taken.
    """
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    a, s = bcast(alpha, xi), bcast(sigma, xi)
    coef = bcast(alpha / sigma**2, xi)
    drift, noise, weight, x = torch.zeros_like(eps0), eps0.clone(), None, None
    for _ in range(steps):
        if gamma_z > 0:  # xi moves: a fresh G forward, kept for the input VJP
            with torch.enable_grad():
                xi_k = xi.detach().requires_grad_(True)
                x = generate(xi_k, cond)
        elif x is None:  # xi stays put: one G forward serves every step
            with torch.no_grad():
                x = generate(xi, cond)
        z_t = a * x.detach() + s * (drift + noise)
        with torch.no_grad():
            x_real = teacher_g(z_t, t, cond)
            delta = coef * (x_real - aux(z_t, t, cond))
        if weight is None:  # w(t) from the chain's initial state (docs/methods.md#m-step)
            weight = vsd_weight(weighting, alpha, sigma, x.detach(), x_real)
        drift = (1 - gamma_eps) * drift + gamma_eps * s * delta
        noise = (1 - gamma_eps) * noise + math.sqrt(2 * gamma_eps) * randn(eps0.shape)
        if gamma_z > 0:
            (vjp,) = torch.autograd.grad(x, xi_k, grad_outputs=delta)  # J_G^T Delta, input gradient only
            xi = xi + gamma_z * (a * vjp - xi) + math.sqrt(2 * gamma_z) * randn(xi.shape)
    return Chain(xi.detach(), drift, noise, eps0, weight)


def eps_tilde(chain: Chain, mode: str, gamma_eps: float, steps: int) -> torch.Tensor:
    """What the M-step sees of eps (docs/methods.md#noise-cancellation): "exact" d_K, "injected" d_K + (1 - gamma)^K eps_0,
    "none" eps_K."""
    if mode == "exact":
        return chain.drift
    if mode == "injected":
        return chain.drift + (1 - gamma_eps) ** steps * chain.eps0
    if mode == "none":
        return chain.drift + chain.noise
    raise ValueError(f"emd: noise_cancel must be one of exact, injected, none, got {mode!r}")


class EMD(OneStepMethod):
    key = "emd"

    def __init__(self, teacher, config: EMDConfig, *, total_steps: int, device="cpu", aux=None):
        super().__init__(teacher, config, total_steps=total_steps, device=device, aux=aux)

    def e_step(self, xi, eps0, t, cond) -> Chain:
        cfg = self.config
        return langevin(self.generate, self.teacher_g, self.aux, self.schedule, xi, eps0, t, cond,
                        steps=cfg.langevin_steps, gamma_eps=cfg.gamma_eps, gamma_z=cfg.gamma_z,
                        weighting=cfg.weighting, randn=self.randn)

    def generator_loss(self, chain: Chain, t, cond) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L_G batch mean, x = G(sg xi_K) with grad, eps_tilde) for a finished chain."""
        cfg = self.config
        e_tilde = eps_tilde(chain, cfg.noise_cancel, cfg.gamma_eps, cfg.langevin_steps)
        x = self.generate(chain.xi, cond)
        coef = chain.weight * self.schedule.alpha(t) / self.schedule.sigma(t)
        loss = -(coef.to(x.dtype) * inner(x, e_tilde.to(x.dtype))).mean()
        return loss, x, e_tilde

    def generator_turn(self, xi, t, eps0, cond):
        chain = self.e_step(xi, eps0, t, cond)
        loss, x, e_tilde = self.generator_loss(chain, t, cond)
        return loss, x, {"emd/eps_tilde_norm": e_tilde.flatten(1).norm(dim=1).mean(),
                         "emd/xi_drift_norm": (chain.xi - xi).flatten(1).norm(dim=1).mean()}
