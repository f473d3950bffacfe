"""An imported Stable Diffusion (1.x/2.x) or SDXL teacher: latent denoiser, prompt encoder and VAE.

The denoiser is the one interface D(z_t, t, cond) -> x0_hat on the teacher's DiscreteSchedule, in latent space: z_t is
a latent as the UNet sees it (the VAE's output times `scaling_factor`, as diffusers' pipelines scale it), and cond a
`TextCond`. Prompts are encoded as diffusers' `encode_prompt` does, so a sample reproduces the pipeline's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.denoisers import NetworkDenoiser
from core.schedules import DiscreteSchedule
from core.text_cond import TextCond


class PromptEncoder(nn.Module):
    """Prompts -> TextCond, matching StableDiffusionPipeline / StableDiffusionXLPipeline `encode_prompt`.

    SD: the text encoder's last hidden state (after its final layer norm). SDXL: both encoders' penultimate hidden
    states concatenated, the pooled (projected) embedding of text_encoder_2, and the time ids (original size, crop
    top-left 0,0, target size) at the model's own resolution.
    """

    def __init__(self, kind: str, tokenizers: list, encoders: list[nn.Module], resolution: int,
                 zero_null: bool = False):
        super().__init__()
        self.kind = kind
        self.tokenizers = tokenizers
        self.encoders = nn.ModuleList(encoders)
        self.resolution = resolution
        # SDXL pipelines with force_zeros_for_empty_prompt use zeros, not the empty prompt's encoding, as the
        # unconditional branch (what the model was trained to drop to); the studio's null condition follows them.
        self.zero_null = zero_null
        self._null: TextCond | None = None

    @staticmethod
    def _tokens(tokenizer, prompts: list[str]):
        return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt")

    @torch.no_grad()
    def encode(self, prompts) -> TextCond:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        device = self.encoders[0].device
        if self.kind == "sd":
            encoder = self.encoders[0]
            ids = self._tokens(self.tokenizers[0], prompts)
            mask = ids.attention_mask.to(device) if getattr(encoder.config, "use_attention_mask", False) else None
            return TextCond(encoder(ids.input_ids.to(device), attention_mask=mask)[0].to(encoder.dtype))
        states, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders):
            out = encoder(self._tokens(tokenizer, prompts).input_ids.to(device), output_hidden_states=True)
            if out[0].ndim == 2:  # CLIPTextModelWithProjection: the projected, pooled embedding comes first
                pooled = out[0]
            states.append(out.hidden_states[-2])
        embeds = torch.cat(states, dim=-1)
        r = self.resolution
        time_ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=embeds.dtype, device=device).repeat(len(prompts), 1)
        return TextCond(embeds, pooled, time_ids)

    def null(self) -> TextCond:
        """The unconditional condition (batch of one), computed once."""
        if self._null is None:
            cond = self.encode([""])
            if self.zero_null:
                cond = TextCond(torch.zeros_like(cond.embeds), torch.zeros_like(cond.pooled), cond.time_ids)
            self._null = cond
        return self._null


class TextUNetCall(nn.Module):
    """Adapts a UNet2DConditionModel to net(z, time, cond: TextCond)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, z, time, cond: TextCond):
        extra = {}
        if cond.pooled is not None:
            extra["added_cond_kwargs"] = {"text_embeds": cond.pooled, "time_ids": cond.time_ids}
        return self.unet(z, time, encoder_hidden_states=cond.embeds, **extra).sample


class TextToImageDenoiser(NetworkDenoiser):
    """A latent text-to-image denoiser; its null condition is the empty prompt's encoding (a batch of `batch` copies).

    It holds that encoding, not the prompt encoder: students and auxiliary networks are copies of the teacher's denoiser,
    and a copy must not carry (or train, or hash) the text encoders.
    """

    takes_prompts = True

    def __init__(self, unet: nn.Module, schedule: DiscreteSchedule, prediction_type: str, null: TextCond):
        cfg = unet.config
        super().__init__(TextUNetCall(unet), schedule, prediction_type, (cfg.in_channels, cfg.sample_size, cfg.sample_size))
        self.null = null

    def null_cond(self, batch: int, device=None) -> TextCond:
        if device is not None and self.null.device != torch.device(device):
            self.null = self.null.to(device)  # moved once, with the module, not on every call
        return self.null.expand(batch)


@dataclass
class SDTeacher:
    """What sampling an imported SD/SDXL teacher needs: its denoiser, prompt encoder and VAE."""

    denoiser: TextToImageDenoiser
    encoder: PromptEncoder
    vae: nn.Module
    scaling_factor: float
    resolution: int

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.denoiser.data_shape

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents as the UNet sees them -> images in [-1, 1] (diffusers divides by scaling_factor before decoding)."""
        return self.vae.decode(latents / self.scaling_factor).sample.clamp(-1.0, 1.0)


def prompt_encoder(kind: str, models: dict, tokenizers: dict, resolution: int, zero_null: bool = False) -> PromptEncoder:
    """The encoder over a loaded folder's parts: text_encoder (+ text_encoder_2 for SDXL) with their tokenizers."""
    parts = ("text_encoder", "text_encoder_2") if kind == "sdxl" else ("text_encoder",)
    return PromptEncoder(kind, [tokenizers[p.replace("text_encoder", "tokenizer")] for p in parts],
                         [models[p] for p in parts], resolution, zero_null=zero_null)


def load_sd_teacher(folder: Path, device="cpu") -> SDTeacher:
    """Load an imported SD/SDXL folder (checked at import) in eval mode with frozen parameters."""
    from core.catalogue import MANIFEST
    from core.teachers.imported import ddpm_alphas_cumprod
    from core.teachers.imported_sd import _load_models, _load_tokenizers

    manifest = json.loads((folder / MANIFEST).read_text())
    kind = manifest["kind"]
    models = {k: m.to(device).requires_grad_(False) for k, m in _load_models(folder, kind).items()}
    tokenizers = _load_tokenizers(folder, kind)
    index = json.loads((folder / "model_index.json").read_text())
    encoder = prompt_encoder(kind, models, tokenizers, int(manifest["resolution"]),
                             zero_null=kind == "sdxl" and index.get("force_zeros_for_empty_prompt", True))
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    schedule = DiscreteSchedule(ddpm_alphas_cumprod(sched))
    denoiser = TextToImageDenoiser(models["unet"], schedule, manifest["prediction_type"], encoder.null()).eval()
    return SDTeacher(denoiser, encoder, models["vae"], float(manifest["scaling_factor"]), int(manifest["resolution"]))
