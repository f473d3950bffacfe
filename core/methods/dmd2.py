"""DMD2 (Yin et al., "Improved Distribution Matching Distillation for Fast Image Synthesis", arXiv 2405.14867).

Generator G and fake score A start as copies of the teacher T; a GAN head H reads A's bottleneck. Iteration n:
the fake score (+ H) is updated every iteration, the generator every `ttur_ratio`-th (TTUR), with the normalised
distribution-matching gradient plus the non-saturating GAN loss; multistep students train on backward-simulated
inputs (no-grad earlier steps, fresh noise). No regression loss. docs/methods.md#dmd2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from core.denoisers import Denoiser
from core.discriminator import FeatureTap, bottleneck, build_head
from core.lora import trainable_parameters
from core.losses import dm_loss, dmd_gradient, fake_score_loss, gan_discriminator_loss, gan_generator_loss
from core.method_specs import DMD2Config
from core.methods.base import Method, make_optimizer, x_stats
from core.posterior import marginal_sample
from core.samplers import marginal
from core.schedules import time_grid
from core.stepping import Update
from core.time_sampling import edm_weight, uniform_t

T_MIN_DSM = 1e-3  # why: the fake-score loss covers the full range; sigma = 0 carries no signal


@contextlib.contextmanager
def frozen(*modules: torch.nn.Module):
    """Parameters of `modules` excluded from autograd inside the block (gradients flow through, not into, them); each
    gets its own flag back after (a LoRA network's shared base stays frozen)."""
    params = [p for module in modules for p in module.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


class DMD2(Method):
    key = "dmd2"
    extra_inputs = ("has_data",)  # without a dataset it refuses the settings that need real images

    def __init__(self, teacher: Denoiser, config: DMD2Config, *, total_steps: int, device="cpu",
                 has_data: bool = True, fake: Denoiser | None = None):
        super().__init__(teacher, config, total_steps=total_steps, device=device)
        if config.gan and not has_data:
            raise ValueError("dmd2: gan needs real images; this teacher has no dataset (set gan=false)")
        if not config.backward_simulation and not has_data:
            raise ValueError("dmd2: backward_simulation=false trains on noised real images; this teacher has no dataset")
        self.student = self.trainable_copy()
        self.fake = fake if fake is not None else self.trainable_copy()
        self.nets = {"student": self.student, "fake": self.fake}
        fake_params = trainable_parameters(self.fake)
        if config.gan:
            self.tap = FeatureTap(bottleneck(self.fake))
            with torch.no_grad():
                z = torch.zeros((1, *self.teacher.data_shape), device=self.device, dtype=self.dtype)
                feats = self.tap.encode(self.fake, z, torch.full((1,), 0.5, dtype=torch.float64),
                                        self.teacher.null_cond(1, self.device))
            self.head = build_head(tuple(feats.shape[1:])).to(device=self.device, dtype=self.dtype)
            self.nets["head"] = self.head
            fake_params += list(self.head.parameters())
        self.fake_params = fake_params
        self.optims = {
            "gen": make_optimizer(trainable_parameters(self.student), config, config.lr_gen, total_steps, adamw=True),
            "fake": make_optimizer(fake_params, config, config.lr_aux, total_steps, adamw=True),
        }
        self.grid = time_grid(self.schedule, config.student_steps)
        if config.student_steps == 1:
            self.grid = torch.tensor([config.one_step_t, 0.0], dtype=torch.float64)

    # -- sampling and backward simulation (one per-step function for both) --------------------------------
    def sample(self, noise, cond=None, steps=None, student=None):
        steps = steps or self.config.student_steps
        grid = self.grid if steps == self.config.student_steps else time_grid(self.schedule, steps)
        return marginal(self.noise_bank(noise), student or self.student, grid, cond)

    @torch.no_grad()
    def backward_simulate(self, noise: torch.Tensor, cond, k: int) -> torch.Tensor:
        """z_{t_k}: run the student for k no-grad steps from pure noise with fresh noise per re-noising [paper;
        docs/methods.md#backward-simulation]."""
        z = noise[0]
        for i in range(k):
            x0_hat = self.student(z, self.grid[i].expand(z.shape[0]), cond)
            z = marginal_sample(self.schedule, x0_hat, self.grid[i + 1].expand(z.shape[0]), noise[i + 1])
        return z

    def generator_input(self, batch: dict, b: int, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_{t_k}, t_k) for this iteration; draws k, then the noise bank, from self.generator."""
        n = self.config.student_steps
        k = int(torch.randint(0, n, (1,), generator=self.generator, device=self.device)) if n > 1 else 0
        t_k = self.grid[k].expand(b)
        noise = self.randn((k + 1, b, *self.teacher.data_shape))
        if k == 0 or self.config.backward_simulation:
            return self.backward_simulate(noise, cond, k), t_k
        # Ablation: noised real images instead of the student's own trajectory.
        return marginal_sample(self.schedule, batch["x"], t_k, noise[k]), t_k

    # -- one iteration ------------------------------------------------------------------------------------
    def losses(self, batch: dict) -> Iterator[Update]:
        cfg = self.config
        b, cond = self.batch_size_and_cond(batch)
        gen_turn = self.step % cfg.ttur_ratio == 0
        metrics: dict = {}

        # 1. Generator output, with grad only on generator turns.
        z_in, t_in = self.generator_input(batch, b, cond)
        with torch.set_grad_enabled(gen_turn):
            x = self.student(z_in, t_in, cond)

        # 2. Generator update: distribution matching (+ GAN) with A and H frozen for this pass, its backward included
        #    (a gradient-checkpointed A recomputes its activations there and must see the same frozen weights).
        if gen_turn:
            with frozen(*([self.fake, self.head] if cfg.gan else [])):
                loss, out = self.generator_loss(x, cond, b)
                metrics.update(out)
                yield Update("gen", loss)

        # 3. Fake score (+ discriminator) update on sg x, every iteration.
        loss, out = self.fake_loss(x.detach(), batch, cond, b)
        metrics.update(out)
        yield Update("fake", loss, "aux")
        return {**metrics, **x_stats(x)}

    def generator_loss(self, x: torch.Tensor, cond, b: int) -> tuple[torch.Tensor, dict]:
        """(L_DM + GAN weight * L_GAN, metrics) for the generator output x (with grad); A and H frozen by the caller."""
        cfg = self.config
        t = uniform_t(b, cfg.t_lo, cfg.t_hi, self.generator, self.device)
        z_t = marginal_sample(self.schedule, x.detach(), t, self.randn(x.shape))
        with torch.no_grad():
            x_real = self.teacher_g(z_t, t, cond)
            x_fake = self.fake(z_t, t, cond)
        g, nan_count = dmd_gradient(x, x_real, x_fake)
        loss = dm_loss(x, g)
        out = {"loss/dm": loss.detach(), "dmd2/nan_count": nan_count}
        if cfg.gan:  # through A and H, which the caller has frozen
            t_g = uniform_t(b, T_MIN_DSM, self.schedule.t_max, self.generator, self.device)
            z_g = marginal_sample(self.schedule, x, t_g, self.randn(x.shape))
            loss_gan = gan_generator_loss(self.head(self.tap.encode(self.fake, z_g, t_g, cond)))
            loss = loss + cfg.gan_weight_gen * loss_gan
            out["loss/gen_gan"] = loss_gan.detach()
        out["loss/gen"] = loss.detach()
        return loss, out

    def fake_loss(self, x: torch.Tensor, batch: dict, cond, b: int) -> tuple[torch.Tensor, dict]:
        """(fake-score DSM loss + disc weight * discriminator loss, metrics) on detached generator samples x."""
        cfg = self.config
        t = uniform_t(b, T_MIN_DSM, self.schedule.t_max, self.generator, self.device)
        z_t = marginal_sample(self.schedule, x, t, self.randn(x.shape))
        log_snr = self.schedule.log_snr(t)
        # w_edm x-MSE, or the eps-MSE of the SD/SDXL code: |eps_hat - eps|^2 = SNR |x_hat - x|^2.
        weight = (edm_weight(log_snr, cfg.sigma_data) if cfg.fake_weighting == "edm" else log_snr.exp()).to(x.dtype)
        if cfg.gan:
            # One forward of A gives both its denoised output (DSM) and the fake features for H.
            x_hat, fake_feats = self.tap.run(self.fake, z_t, t, cond)
        else:
            x_hat = self.fake(z_t, t, cond)
        # Per-element mean [code].
        loss_fake = fake_score_loss(x_hat, x, weight)
        loss = loss_fake
        out = {"loss/aux": loss_fake.detach()}
        if cfg.gan:
            t_r = uniform_t(b, T_MIN_DSM, self.schedule.t_max, self.generator, self.device)
            z_r = marginal_sample(self.schedule, batch["x"], t_r, self.randn(x.shape))
            real_cond = batch.get("cond", cond)
            real_logits = self.head(self.tap.encode(self.fake, z_r, t_r, real_cond))
            loss_disc = gan_discriminator_loss(real_logits, self.head(fake_feats))
            loss = loss + cfg.gan_weight_disc * loss_disc
            out["loss/disc"] = loss_disc.detach()
        return loss, out
