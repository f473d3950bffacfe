"""The `shapes` teacher's parts, as a Stable Diffusion pipeline holds them: a CLIP tokenizer over the caption
vocabulary (its files written here, nothing downloaded), a CLIPTextModel, an AutoencoderKL, a UNet2DConditionModel
with cross-attention and SD's discrete 1,000-step schedule; plus the batches both training stages read.

Stage 1 fits the VAE to rendered scenes; stage 2 fits the text encoder and the UNet together on the frozen VAE's
latents (there is no pretrained text encoder to start from), with 10 % of captions dropped to the empty prompt so
classifier-free guidance has an unconditional model to steer from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.shapes import BACKGROUNDS, COLOURS, PHRASES, SHAPES, SIZES, render, training_scene

SPECIALS = ("<|startoftext|>", "<|endoftext|>")
MAX_TOKENS = 32  # the longest caption is 21 tokens with its start and end; SD's 77 would triple the attention cost
CAPTION_DROP = 0.1


def caption_words() -> list[str]:
    """Every word the caption grammar (core/shapes.py) uses, in a fixed order."""
    words = ["a", "and", "on", "background", *SIZES, *COLOURS, *SHAPES, *BACKGROUNDS]
    for phrase in PHRASES.values():
        words += phrase.split()
    return list(dict.fromkeys(words))


def byte_symbols() -> list[str]:
    """CLIP's byte-to-unicode table: every byte a printable symbol, so any text still tokenises (byte by byte)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    table = dict(zip(printable, printable)) | {b: 256 + i for i, b in enumerate(extra)}
    return [chr(table[b]) for b in range(256)]


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word: merge the best-ranked adjacent pair, every occurrence left to right, until none ranks."""
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
        best = min(pairs, key=lambda p: ranks.get(p, len(ranks) + 1))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt of a CLIP BPE tokenizer in which every caption word is one token.

    Merges are appended word by word: tokenise the word with the merges so far and, while it is in pieces, append the
    merge of its first two pieces. An appended merge ranks below every earlier one, so it never changes how an
    earlier word tokenises: at each of that word's steps one of its own, better-ranked merges applies."""
    ranks: dict[tuple[str, str], int] = {}
    for word in caption_words():
        pieces = _bpe([*word[:-1], word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            pieces = _bpe([*word[:-1], word[-1] + "</w>"], ranks)
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    symbols = byte_symbols()
    tokens = [*SPECIALS, *symbols, *(s + "</w>" for s in symbols), *(a + b for a, b in ranks)]
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(tokens))}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab, merges_file


def build_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab, merges = write_tokenizer_files(folder)
    return CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=MAX_TOKENS)


@dataclass(frozen=True)
class ShapesArchitecture:
    """Component configs [choice]. The VAE halves the 32 px side once: latents 4 x 16 x 16, because 8 x 8 latents
    reconstructed only 88.0 % of test scenes with every attribute right against 98.6 % (benchmarks/shapes_vae.py).
    The UNet works at 16, 8 and 4 with cross-attention at 8 and 4 only: attention over 256 positions cost 2.8x the
    step (0.41 s against 1.14 s per batch of 64 on 2 cores), with 4.1M parameters in all.

    v-prediction on SD's schedule, as Stable Diffusion 2.x: an epsilon model trained on uniform times learned shapes
    and colours but ignored which side an object goes on (README, "The shapes teacher"). The epsilon loss weighs an
    image-space error by the signal-to-noise ratio, 0.005 at t = 999, so the noise levels where the layout is decided
    barely trained it; the v loss weighs them about 1."""

    prediction_type: str = "v_prediction"

    vae: dict = field(default_factory=lambda: dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=16,
        sample_size=32))
    text: dict = field(default_factory=lambda: dict(
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3,
        max_position_embeddings=MAX_TOKENS, projection_dim=64))
    unet: dict = field(default_factory=lambda: dict(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16))


def build_parts(arch: ShapesArchitecture, tokenizer_dir: Path, seed: int = 0) -> dict:
    """Freshly initialised parts (seeded), named as a StableDiffusionPipeline names them."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**arch.vae)
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                 **arch.text)
    text_encoder = CLIPTextModel(text_config)
    unet = UNet2DConditionModel(**arch.unet)
    # SD's schedule: 1,000 discrete steps, scaled_linear betas 0.00085 .. 0.012.
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type=arch.prediction_type, clip_sample=False)
    return dict(vae=vae, text_encoder=text_encoder, unet=unet, tokenizer=tokenizer, scheduler=scheduler)


def scene_batch(batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """Rendered training scenes in [-1, 1] [B, 3, 32, 32] and their captions; seeds drawn from `generator`."""
    seeds = torch.randint(0, 2**31 - 1, (batch_size,), generator=generator).tolist()
    scenes = [training_scene(s) for s in seeds]
    pixels = np.stack([render(s) for s in scenes]).astype(np.float32)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1.0, [s.caption for s in scenes]


class TextNet(nn.Module):
    """The text encoder and the UNet as one network net(z, time, token_ids) for the studio's denoiser and trainer:
    stage 2 trains both, and the loop's EMA averages both."""

    def __init__(self, text_encoder: nn.Module, unet: nn.Module, null_ids: torch.Tensor):
        super().__init__()
        self.text_encoder, self.unet = text_encoder, unet
        self.register_buffer("null_ids", null_ids.reshape(1, -1), persistent=False)  # the empty prompt's tokens

    def forward(self, z, time, token_ids):
        if token_ids is None:  # unconditional use (previews): the empty prompt, as the 10 % dropped captions
            token_ids = self.null_ids.expand(z.shape[0], -1)
        states = self.text_encoder(token_ids)[0]
        return self.unet(z, time, encoder_hidden_states=states).sample


class LatentCaptionBatches:
    """Stage 2's sample_batch: scenes encoded by the frozen VAE (posterior mean x scaling_factor) and their caption
    tokens, a tenth of captions replaced by the empty prompt (drawn from the same generator)."""

    def __init__(self, vae: nn.Module, tokenizer, scaling_factor: float):
        self.vae, self.tokenizer, self.scaling_factor = vae.eval().requires_grad_(False), tokenizer, scaling_factor

    def tokens(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                              return_tensors="pt").input_ids

    @torch.no_grad()
    def __call__(self, batch_size: int, generator: torch.Generator) -> dict:
        images, captions = scene_batch(batch_size, generator)
        drop = (torch.rand(batch_size, generator=generator) < CAPTION_DROP).tolist()
        captions = ["" if d else c for d, c in zip(drop, captions)]
        latents = self.vae.encode(images).latent_dist.mean * self.scaling_factor
        return {"x": latents, "cond": self.tokens(captions)}
