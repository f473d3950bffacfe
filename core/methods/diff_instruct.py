"""Diff-Instruct / VSD (Luo et al., arXiv 2305.18455; Wang et al., arXiv 2305.16213): the reverse-KL baseline.

With z_t = alpha_t G(xi) + sigma_t eps and t ~ U(t_lo, t_hi):
  L_G = w(t) (alpha_t^2 / sigma_t^2) <G(xi), sg(A(z_t) - T_g(z_t))>     (docs/methods.md#diff-instruct)
It equals EMD with K = 1, gamma_eps = 1, gamma_z = 0 and exact noise cancellation; this file implements it
directly, so that the test of that identity compares two independent code paths.
"""

from __future__ import annotations

import torch

from core.denoisers import bcast
from core.losses import inner, vsd_weight
from core.method_specs import DiffInstructConfig
from core.methods.base import OneStepMethod


class DiffInstruct(OneStepMethod):
    key = "diff-instruct"

    def __init__(self, teacher, config: DiffInstructConfig, *, total_steps: int, device="cpu", aux=None):
        super().__init__(teacher, config, total_steps=total_steps, device=device, aux=aux)

    def generator_loss(self, xi, eps, t, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_G batch mean, x = G(xi) with grad) for injected (xi, eps, t)."""
        x = self.generate(xi, cond)
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        z_t = bcast(alpha, x) * x.detach() + bcast(sigma, x) * eps
        with torch.no_grad():
            x_real = self.teacher_g(z_t, t, cond)
            x_fake = self.aux(z_t, t, cond)
        w = vsd_weight(self.config.weighting, alpha, sigma, x, x_real) * (alpha / sigma) ** 2
        loss = (w.to(x.dtype) * inner(x, (x_fake - x_real).to(x.dtype))).mean()
        return loss, x

    def generator_turn(self, xi, t, eps0, cond):
        loss, x = self.generator_loss(xi, eps0, t, cond)
        return loss, x, {}
