"""Moment Matching Distillation, instant / parameter-space variant (Salimans et al., arXiv 2406.04103, Alg. 3).

No auxiliary network: the teacher's training-loss gradient should vanish on student samples. With
L_theta(x, z_s) = w(s) ||x - T(z_s)||^2 and a frozen diagonal preconditioner Lambda (Adam's 1/(sqrt(v) + eps)):
  batch B:  nu = Lambda * grad_theta mean_B L_theta(x~', z'_s)            (x~' without gradient to eta)
  batch A:  u = J_theta nu, a parameter-space JVP of theta -> T(z_s)
            L_G = -w(s) <x~, sg u>                                        (sign derived, docs/methods.md#sign-of-the-update)
Guidance is straight-through: values from T_g, gradients through the conditional teacher. Lambda is estimated
from the teacher's own loss on real data during the first `precond_batches` steps (docs/methods.md#preconditioner); the LR schedule
starts after that phase.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from core.denoisers import Denoiser
from core.lora import trainable_parameters
from core.losses import inner, sum_sq
from core.method_specs import MMDInstantConfig
from core.methods.base import Method, make_optimizer, x_stats
from core.posterior import marginal_sample, posterior_sample
from core.stepping import Update
from core.time_sampling import karras_t, mmd_weight, mmd_weighting


class MMDInstant(Method):
    key = "mmd-instant"

    def __init__(self, teacher: Denoiser, config: MMDInstantConfig, *, total_steps: int, device="cpu"):
        if total_steps <= config.precond_batches:
            raise ValueError(f"mmd-instant: iterations ({total_steps}) must exceed precond_batches "
                             f"({config.precond_batches}), which are spent estimating the preconditioner")
        super().__init__(teacher, config, total_steps=total_steps, device=device)
        self.student = self.trainable_copy()
        self.nets = {"student": self.student}
        self.optims = {"gen": make_optimizer(trainable_parameters(self.student), config, config.lr_gen,
                                             total_steps - config.precond_batches)}
        self.weighting = mmd_weighting(config)
        self.names = [n for n, _ in self.teacher.named_parameters()]
        self.v = {n: torch.zeros_like(p) for n, p in self.teacher.named_parameters()}  # second moments
        self.precond: dict[str, torch.Tensor] | None = None                          # Lambda, once estimated
        self.finished_at: int | None = None                                          # the iteration that set it

    # -- teacher as a function of its parameters --------------------------------------------------------
    def theta(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.teacher.named_parameters()}

    def teacher_at(self, params, z_s, s, cond) -> torch.Tensor:
        return functional_call(self.teacher, params, (z_s, s, cond))

    def straight_through(self, out_c, z_s, s, cond) -> torch.Tensor:
        """T_st = T_c + sg(T_g - T_c): guided value, conditional gradient (docs/methods.md#mmd-instant)."""
        if self.teacher_g is self.teacher:
            return out_c
        with torch.no_grad():
            guided = self.teacher_g(z_s, s, cond)
        return out_c + (guided - out_c).detach()

    def teacher_loss_grad(self, x, z_s, s, cond) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """grad_theta of mean_b w(s) ||x - T_st(z_s)||^2 (never touches .grad), and the loss."""
        params = {n: p.requires_grad_(True) for n, p in self.theta().items()}
        out = self.straight_through(self.teacher_at(params, z_s, s, cond), z_s, s, cond)
        w = mmd_weight(self.weighting, self.schedule, s, self.config.sigma_data, x, out.detach()).to(x.dtype)
        loss = (w * sum_sq(x.detach() - out)).mean()
        grads = torch.autograd.grad(loss, list(params.values()))
        return dict(zip(params, grads)), loss.detach()

    def jvp_theta(self, nu, z_s, s, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """(T_c(z_s), J_theta nu) by forward-mode AD; the double-VJP trick where an op lacks forward mode."""
        theta = self.theta()
        # The fused CPU/GPU attention kernels have neither forward-mode AD nor double backward: use the math one.
        with sdpa_kernel([SDPBackend.MATH]):
            try:
                return jvp(lambda p: self.teacher_at(p, z_s, s, cond), (theta,), (nu,))
            except (RuntimeError, NotImplementedError):
                params = {n: p.requires_grad_(True) for n, p in theta.items()}
                out = self.teacher_at(params, z_s, s, cond)
                probe = torch.zeros_like(out, requires_grad=True)
                vjp = torch.autograd.grad(out, list(params.values()), grad_outputs=probe, create_graph=True)
                (u,) = torch.autograd.grad(vjp, probe, grad_outputs=[nu[n] for n in params])
                return out.detach(), u

    # -- shared sampling pieces -------------------------------------------------------------------------
    def sample(self, noise, cond=None, steps=None, student=None):
        return self.ancestral_sample(noise, cond, steps, student)

    def draw(self, x) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(s, t, z_t) per example: s ~ Karras, t = min(s + delta, t_max), z_t = alpha_t x + sigma_t eps."""
        cfg = self.config
        b = x.shape[0]
        s = karras_t(b, self.schedule, cfg.sigma_min, cfg.sigma_max, cfg.rho, self.generator, self.device)
        t = (s + torch.rand(b, generator=self.generator, device=self.device, dtype=torch.float64)
             / cfg.student_steps).clamp(max=self.schedule.t_max)
        return s, t, marginal_sample(self.schedule, x, t, self.randn(x.shape))

    # -- the two phases ---------------------------------------------------------------------------------
    def precondition_step(self, x, cond) -> dict:
        """Accumulate Adam's second moment of the teacher's own loss on real data, without updating theta."""
        cfg = self.config
        s, _, _ = self.draw(x)
        z_s = marginal_sample(self.schedule, x, s, self.randn(x.shape))
        grads, loss = self.teacher_loss_grad(x, z_s, s, cond)
        for n, g in grads.items():
            self.v[n].mul_(cfg.precond_beta2).add_(g.pow(2), alpha=1 - cfg.precond_beta2)
        done = self.step + 1
        if done == cfg.precond_batches:
            self.finish_preconditioner()
            self.finished_at = self.step
        return {"loss/teacher": loss, "mmd/precond_progress": done / cfg.precond_batches}

    def finish_preconditioner(self) -> None:
        """Lambda = 1 / (sqrt(v / bias correction) + eps) from the precond_batches estimates of v."""
        cfg = self.config
        correction = 1 - cfg.precond_beta2**cfg.precond_batches
        self.precond = {n: 1.0 / ((v / correction).sqrt() + cfg.precond_eps) for n, v in self.v.items()}

    def losses(self, batch: dict) -> Iterator[Update]:
        """Phase 1 (the first precond_batches iterations): estimate Lambda. Phase 2: batch halves A and B; randomness
        (s, delta, eps, n) for B, then A."""
        x, cond = batch["x"], batch.get("cond")
        # Every micro-batch of the last phase-1 iteration belongs to phase 1 (gradient accumulation).
        if self.precond is None or self.step == self.finished_at:
            return self.precondition_step(x, cond)
        return (yield from self.distill_step(x, cond))

    def half(self, x, cond):
        h = x.shape[0] // 2
        if h < 1:
            raise ValueError("mmd-instant: batch_size must be >= 2 (the batch is split into halves A and B)")
        return (x[:h], None if cond is None else cond[:h]), (x[h:2 * h], None if cond is None else cond[h:2 * h])

    def distill_step(self, x, cond) -> Iterator[Update]:
        cfg = self.config
        (x_a, c_a), (x_b, c_b) = self.half(x, cond)
        # Batch B: nu = Lambda * grad_theta of the teacher's loss on student samples (no gradient to eta).
        s_b, t_b, z_tb = self.draw(x_b)
        with torch.no_grad():
            xt_b = self.student(z_tb, t_b, c_b)
        z_sb = posterior_sample(self.schedule, z_tb, xt_b, s_b, t_b, self.randn(x_b.shape))
        grads, _ = self.teacher_loss_grad(xt_b, z_sb, s_b, c_b)
        nu = {n: self.precond[n] * g for n, g in grads.items()}
        # Batch A: u = J_theta nu at z_s ~ q(z_s | z_t, sg x~); L_G = -w(s) <x~, sg u>.
        s_a, t_a, z_ta = self.draw(x_a)
        xt_a = self.student(z_ta, t_a, c_a)
        z_sa = posterior_sample(self.schedule, z_ta, xt_a.detach(), s_a, t_a, self.randn(x_a.shape)).detach()
        out_c, u = self.jvp_theta(nu, z_sa, s_a, c_a)
        u = u.detach()
        w_a = mmd_weight(self.weighting, self.schedule, s_a, cfg.sigma_data, xt_a, out_c).to(x.dtype)
        loss = -(w_a * inner(xt_a, u)).mean()
        t_st = self.straight_through(out_c, z_sa, s_a, c_a)
        # Unbiased estimate of Gamma_A^T Lambda Gamma_B, the (preconditioned) moment norm (docs/methods.md#moment-norm).
        moment = (-2.0 * w_a * inner(xt_a.detach() - t_st, u)).mean()
        metrics = {"loss/gen": loss.detach(), "mmd/moment_norm": moment.detach(), **x_stats(xt_a)}
        yield Update("gen", loss)
        return metrics

    def extra_state(self) -> dict:
        return {"v": self.v, "precond": self.precond}

    def load_extra_state(self, state: dict) -> None:
        if state.get("v") is not None:
            self.v = {n: t.to(self.device) for n, t in state["v"].items()}
        self.precond = None if state.get("precond") is None else {n: t.to(self.device) for n, t in state["precond"].items()}
