"""Moment Matching Distillation, alternating variant (Salimans et al., "Multistep Distillation of Diffusion Models via
Moment Matching", NeurIPS 2024, arXiv 2406.04103, Alg. 2).

The student G is a k-step ancestral sampler whose prediction x~ = G(z_t) should be a sample of q(x | z_t). For
z_s ~ q(z_s | z_t, sg x~) its conditional mean, estimated by an auxiliary denoiser A, must match the teacher's:
  even iterations  L_A = w(s) (||sg x~ - A(z_s)||^2 + ||T_g(z_s) - A(z_s)||^2)
  odd iterations   L_G = w(s) <x~, sg(A(z_s) - T_g(z_s))>
Continuous s ~ Karras, t = s + delta with delta ~ U[0, 1/k]; z_s detached (docs/methods.md#mmd).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from core.denoisers import Denoiser, bcast
from core.losses import inner, sum_sq
from core.method_specs import MMDConfig
from core.methods.base import Method, x_stats
from core.posterior import marginal_sample, posterior_sample
from core.stepping import Update
from core.time_sampling import karras_t, mmd_weight, mmd_weighting


class MMD(Method):
    key = "mmd"

    def __init__(self, teacher: Denoiser, config: MMDConfig, *, total_steps: int, device="cpu",
                 aux: Denoiser | None = None):
        super().__init__(teacher, config, total_steps=total_steps, device=device)
        # Alternation 1:1: A updates on even iterations, G on odd ones, so each schedule spans that network's own
        # updates and the linear decay reaches 0 at the end of the run [paper] (not halfway down, as it would if
        # it counted iterations).
        self.init_student_and_aux(aux, gen_updates=max(1, total_steps // 2), aux_updates=(total_steps + 1) // 2)
        self.weighting = mmd_weighting(config)

    def sample(self, noise, cond=None, steps=None, student=None):
        return self.ancestral_sample(noise, cond, steps, student)

    def draw_times(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """s ~ Karras per example, t = min(s + delta, t_max) with delta ~ U[0, 1/k] [paper]."""
        cfg = self.config
        s = karras_t(b, self.schedule, cfg.sigma_min, cfg.sigma_max, cfg.rho, self.generator, self.device)
        delta = torch.rand(b, generator=self.generator, device=self.device, dtype=torch.float64) / cfg.student_steps
        return s, (s + delta).clamp(max=self.schedule.t_max)

    def renoise(self, z_t, x_tilde, s, t, noise) -> torch.Tensor:
        """z_s ~ q(z_s | z_t, sg x~) (conditional, the paper's choice) or q(z_s | sg x~) (the ablation), detached."""
        x_tilde = x_tilde.detach()
        if self.config.renoise == "conditional":
            return posterior_sample(self.schedule, z_t, x_tilde, s, t, noise).detach()
        return marginal_sample(self.schedule, x_tilde, s, noise).detach()

    def losses(self, batch: dict) -> Iterator[Update]:
        """Randomness order: s, delta, eps (forward noise), n (re-noising)."""
        x, cond = batch["x"], batch.get("cond")
        b = x.shape[0]
        aux_turn = self.step % 2 == 0
        s, t = self.draw_times(b)
        z_t = marginal_sample(self.schedule, x, t, self.randn(x.shape))
        with torch.set_grad_enabled(not aux_turn):
            x_tilde = self.student(z_t, t, cond)
        z_s = self.renoise(z_t, x_tilde, s, t, self.randn(x.shape))
        with torch.no_grad():
            x_teacher = self.teacher_g(z_s, s, cond)
        w = mmd_weight(self.weighting, self.schedule, s, self.config.sigma_data, x_tilde, x_teacher).to(x.dtype)
        if aux_turn:
            a = self.aux(z_s, s, cond)
            # At the optimum A predicts the average of the student's and the teacher's conditional means.
            loss = (w * (sum_sq(x_tilde.detach() - a) + sum_sq(x_teacher - a))).mean()
            metrics = {"loss/aux": loss.detach()}
            yield Update("aux", loss)
        else:
            with torch.no_grad():
                moment_gap = self.aux(z_s, s, cond) - x_teacher
            loss = (w * inner(x_tilde, moment_gap)).mean()
            metrics = {"loss/gen": loss.detach(),
                       "mmd/moment_gap": bcast(w.sqrt(), moment_gap).mul(moment_gap).flatten(1).norm(dim=1).mean()}
            yield Update("gen", loss)
        return {**metrics, **x_stats(x_tilde)}
