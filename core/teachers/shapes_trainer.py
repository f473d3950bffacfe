"""Training the `shapes` teacher with the one loop, in two stages, into a StableDiffusionPipeline folder.

Stage 1 (`VAETrainer`) fits the AutoencoderKL to rendered scenes: pixel MSE plus a small KL term that keeps the latent
posterior close to N(0, I), so the latents are smooth enough to diffuse. Between the stages the latent scale is
measured (scaling_factor = 1 / std of the posterior means, as SD's 0.18215 was), so the UNet sees unit-variance
latents. Stage 2 (`TextToImageTrainer`) fits the text encoder and the UNet together by denoising score matching on
SD's discrete schedule (core.teachers.trainer.DenoiserTrainer), captions dropped 10 % of the time.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.denoisers import CFGDenoiser, NetworkDenoiser
from core.noise import seeded_noise
from core.samplers import sample
from core.schedules import DiscreteSchedule
from core.shapes import evaluation_scenes
from core.stepping import SteppedTask, Update
from core.teachers.shapes_parts import TextNet, scene_batch
from core.teachers.trainer import DenoiserTrainer, lr_factor
from core.text_cond import TextCond

KL_WEIGHT = 1e-4  # per latent element against per-pixel MSE [choice]: latents stay near N(0, I) yet keep the detail



@dataclass
class VAETrainer(SteppedTask):
    """A core.train.Trainable for stage 1."""

    vae: nn.Module
    config: object  # core.specs.TrainConfig
    device: str = "cpu"

    def __post_init__(self):
        self.vae = self.vae.to(self.device).train()
        self.generator = torch.Generator(device=self.device)
        self.optimizer = torch.optim.Adam(self.vae.parameters(), lr=self.config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.config.warmup, self.config.iterations))
        self.optims = {"vae": (self.optimizer, self.scheduler)}   # stepped by core.stepping
        self.grad_clip, self.precision, self.step = self.config.grad_clip, self.config.precision, 0

    def losses(self, batch: dict) -> Iterator[Update]:
        x = batch["x"]
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=self.generator,
                                                         device=x.device)
        rec = self.vae.decode(z).sample
        mse = (rec - x).pow(2).mean()
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = mse + KL_WEIGHT * kl
        yield Update("vae", loss)
        # PSNR of images in [-1, 1] (peak-to-peak 2): a reconstruction monitor in the units papers report.
        return {"loss/rec": mse.detach(), "loss/kl": kl.detach(),
                "stats/psnr": 10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10))}

    def state_dict(self) -> dict:
        return {"vae": self.vae.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.vae.load_state_dict(state["vae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def ema_source(self) -> nn.Module:
        return self.vae

    @torch.no_grad()
    def preview(self, seeds: tuple[int, ...], module: nn.Module) -> torch.Tensor:
        """Fixed evaluation scenes above their reconstructions by `module` (the EMA copy while training)."""
        images, _ = scene_batch(len(seeds), torch.Generator().manual_seed(seeds[0]))
        images = images.to(self.device)
        rec = module.decode(module.encode(images).latent_dist.mean).sample.clamp(-1, 1)
        return torch.cat([images, rec])


def image_batches(batch_size: int, generator: torch.Generator) -> dict:
    """Stage 1's sample_batch: rendered training scenes."""
    return {"x": scene_batch(batch_size, generator)[0]}


@torch.no_grad()
def latent_scale(vae: nn.Module, batches: int = 8, batch_size: int = 128) -> float:
    """1 / std of the posterior means over fixed training scenes: the pipeline's vae.config.scaling_factor."""
    generator = torch.Generator().manual_seed(0)
    means = [vae.encode(scene_batch(batch_size, generator)[0]).latent_dist.mean for _ in range(batches)]
    return float(1.0 / torch.cat(means).std())


class TextToImageTrainer(DenoiserTrainer):
    """Stage 2: DenoiserTrainer on the TextNet (text encoder + UNet); previews draw fixed evaluation prompts with
    guidance and decode them through the frozen VAE."""

    def __init__(self, net: TextNet, alphas_cumprod, latent_shape, config, vae: nn.Module, scaling_factor: float,
                 tokens, guidance: float = 4.0, device="cpu", prediction_type: str = "epsilon"):
        denoiser = NetworkDenoiser(net, DiscreteSchedule(alphas_cumprod), prediction_type, latent_shape)
        super().__init__(denoiser, config, device=device)
        self.vae, self.scaling_factor, self.tokens, self.guidance = vae.to(device), scaling_factor, tokens, guidance

    @torch.no_grad()
    def preview(self, seeds: tuple[int, ...], module: nn.Module) -> torch.Tensor:
        captions = [s.caption for s in evaluation_scenes("shapes-test", len(seeds))]
        previewer = _TokenDenoiser(module, self.denoiser.schedule, self.denoiser.prediction_type,
                                   self.denoiser.data_shape).eval()
        guided = CFGDenoiser(previewer, self.guidance)
        noise = seeded_noise(seeds, self.denoiser.data_shape, device=self.device)
        cond = TextCond(self.tokens(captions).to(self.device)[:, :, None].float())
        latents = sample(guided, noise, self.preview_steps, cond)
        return self.vae.decode(latents / self.scaling_factor).sample.clamp(-1, 1)


class _TokenDenoiser(NetworkDenoiser):
    """Previews only: the TextNet guided by CFGDenoiser, its token ids carried in a TextCond ([B, L, 1] floats) so
    the batched conditional and unconditional halves concatenate like encoded prompts."""

    takes_prompts = True

    def __init__(self, net: TextNet, schedule, prediction_type: str, data_shape):
        super().__init__(net, schedule, prediction_type, data_shape)

    def null_cond(self, batch: int, device=None) -> TextCond:
        return TextCond(self.net.null_ids.expand(batch, -1)[:, :, None].float())

    def raw(self, z_t, t, cond=None):
        ids = None if cond is None else cond.embeds[:, :, 0].long()
        return super().raw(z_t, t, ids)


def save_pipeline(folder: Path, *, vae, text_encoder, unet, tokenizer, tokenizer_files: Path, scheduler,
                  scaling_factor: float) -> Path:
    """The teacher as a StableDiffusionPipeline folder (safetensors), its tokenizer with vocab.json and merges.txt."""
    from diffusers import StableDiffusionPipeline

    vae.register_to_config(scaling_factor=scaling_factor)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):  # save_pretrained writes tokenizer.json only
        shutil.copyfile(tokenizer_files / name, Path(folder) / "tokenizer" / name)
    return Path(folder)


@dataclass
class ShapesResult:
    status: str            # "completed" or "stopped" (the stage that stopped)
    stage: str             # "vae" or "unet": the last stage run
    step: int              # that stage's step
    pipeline: Path | None  # the StableDiffusionPipeline folder once both stages completed
    cpu_minutes: float     # both stages' process CPU time, summed over resumes (out_dir/STAGE/cpu.json)


class CpuClock:
    """A stage's CPU seconds in folder/cpu.json, summed over resumes (so the recorded figure is the whole training's,
    not the last session's); `tick` saves the running total (called at every progress line). Counts from `begin`."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / "cpu.json"
        self.before = json.loads(self.path.read_text())["cpu_s"] if self.path.is_file() else 0.0
        self.start: float | None = None

    def begin(self) -> None:
        self.start = time.process_time()

    @property
    def seconds(self) -> float:
        return self.before + (time.process_time() - self.start if self.start is not None else 0.0)

    def tick(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"cpu_s": self.seconds}))


def load_vae(folder: Path, arch) -> nn.Module:
    """The AutoencoderKL of a pipeline folder (folder/vae) to reuse instead of training stage 1; refused unless it is
    the recipe's architecture (the UNet's latent shape and the shipped record depend on it)."""
    from diffusers import AutoencoderKL

    path = Path(folder) / "vae"
    if not (path / "config.json").is_file():
        raise ValueError(f"vae: {folder} has no vae/config.json (give a StableDiffusionPipeline folder)")
    config = json.loads((path / "config.json").read_text())
    for key, want in arch.vae.items():  # before loading: a mismatched folder fails here, not in load_state_dict
        got = config.get(key)
        if (list(got) if isinstance(got, (list, tuple)) else got) != (list(want) if isinstance(want, tuple) else want):
            raise ValueError(f"vae: {path} has {key}={got!r}; the shapes recipe needs {want!r}")
    return AutoencoderKL.from_pretrained(path)


def train_shapes(out_dir: Path, *, arch, vae_config, unet_config, seed: int = 0, device="cpu", on_progress=None,
                 should_stop=None, on_checkpoint=None, vae_from: Path | None = None) -> ShapesResult:
    """Both stages (each resumable from its own checkpoints) and the pipeline folder out_dir/pipeline.

    The shipped weights are each stage's EMA weights (what run_training exports). `on_progress` gets the loop's
    progress dicts with "stage" added; `on_checkpoint` is called for stage 2's checkpoints only (stage 1's steps would
    repeat its step numbers). `vae_from` (a pipeline folder) skips stage 1 and reuses that folder's autoencoder: the
    text encoder and UNet can be retrained on the same latents without paying for the VAE again."""
    from core.checkpoints import load_state
    from core.teachers.shapes_parts import LatentCaptionBatches, build_parts
    from core.train import run_training

    out_dir = Path(out_dir)
    clocks = {stage: CpuClock(out_dir / stage) for stage in ("vae", "unet")}

    def stage_run(stage, trainer, batches, config, spec, checkpointed=None):
        def report(p):
            clocks[stage].tick()
            if on_progress:
                on_progress({**p, "stage": stage})
        clocks[stage].begin()
        try:
            return run_training(trainer, batches, config, out_dir=out_dir / stage, spec={"name": "shapes", **spec},
                                device=device, on_progress=report, should_stop=should_stop, on_checkpoint=checkpointed)
        finally:
            clocks[stage].tick()

    def result(status, stage, step, pipeline=None):
        return ShapesResult(status, stage, step, pipeline, round(sum(c.seconds for c in clocks.values()) / 60, 2))

    parts = build_parts(arch, out_dir / "tokenizer-files", seed)
    if vae_from is not None:
        vae = load_vae(vae_from, arch)
    else:
        vae = parts["vae"]
        first = stage_run("vae", VAETrainer(vae, vae_config, device), image_batches, vae_config, {"stage": "vae"})
        if first.status != "completed":
            return result(first.status, "vae", first.step)
        vae.load_state_dict(load_state(first.model_path)[0])
    vae.eval().requires_grad_(False)
    scale = latent_scale(vae)
    batches = LatentCaptionBatches(vae, parts["tokenizer"], scale)
    net = TextNet(parts["text_encoder"], parts["unet"], batches.tokens([""])[0])
    latent_shape = (arch.unet["in_channels"], arch.unet["sample_size"], arch.unet["sample_size"])
    trainer = TextToImageTrainer(net, parts["scheduler"].alphas_cumprod, latent_shape, unet_config, vae, scale,
                                 batches.tokens, device=device, prediction_type=arch.prediction_type)
    second = stage_run("unet", trainer, batches, unet_config, {"stage": "unet", "scaling_factor": scale},
                       on_checkpoint)
    if second.status != "completed":
        return result(second.status, "unet", second.step)
    net.load_state_dict(load_state(second.model_path)[0], strict=False)  # null_ids is not saved
    folder = out_dir / "pipeline"
    if folder.exists():
        shutil.rmtree(folder)
    save_pipeline(folder, vae=vae, text_encoder=net.text_encoder, unet=net.unet, tokenizer=parts["tokenizer"],
                  tokenizer_files=out_dir / "tokenizer-files", scheduler=parts["scheduler"], scaling_factor=scale)
    return result("completed", "unet", second.step, folder)
