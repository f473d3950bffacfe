"""Tiny random diffusers DDPM pipelines for import tests (real `save_pretrained` folders, built in a temp dir)."""

from __future__ import annotations

import json
from pathlib import Path

TINY_UNET = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                 norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "UpBlock2D"))


def tiny_unet(seed: int = 0, **overrides):
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**{**TINY_UNET, **overrides}).eval()


def save_tiny_ddpm(folder: Path, prediction_type: str = "epsilon", *, unet=None, seed: int = 0,
                   safe_serialization: bool = True, **unet_overrides) -> Path:
    """Save DDPMPipeline(UNet2DModel 3x8x8, DDPMScheduler(1000 steps, prediction_type)) to `folder`."""
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = unet if unet is not None else tiny_unet(seed, **unet_overrides)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=safe_serialization)
    return Path(folder)


# -- Tiny random Stable Diffusion / SDXL pipelines (component configs as in diffusers' own pipeline tests) ---------

TINY_SD_UNET = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
# SDXL: two 32-wide encoders concatenated (64), pooled 32 + six time ids x 8 = 80 added-embedding inputs.
TINY_SDXL_UNET = dict(TINY_SD_UNET, attention_head_dim=(2, 4), use_linear_projection=True,
                      addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                      projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=1)
TINY_VAE = dict(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"))
# Token ids follow the generated vocabulary: 0 = <|startoftext|>, 1 = <|endoftext|> (also padding).
TINY_CLIP = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                 layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5, vocab_size=1000, projection_dim=32)
TINY_MERGES = ("t h", "th e</w>", "a n", "an d</w>", "o f</w>", "i n", "c a", "ca t</w>", "d o", "do g</w>")


def write_tiny_vocab(folder: Path) -> tuple[Path, Path]:
    """A tiny CLIP BPE vocabulary (specials, the 256 byte symbols with and without </w>, ten merges): ~520 ids."""
    folder.mkdir(parents=True, exist_ok=True)
    from core.teachers.shapes_parts import byte_symbols  # CLIP's byte table, as the studio writes it

    symbols = byte_symbols()
    merged = [m.replace(" ", "") for m in TINY_MERGES]
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols), *merged]
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(tokens))}))
    merges.write_text("#version: 0.2\n" + "\n".join(TINY_MERGES) + "\n")
    return vocab, merges


def tiny_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab, merges = write_tiny_vocab(folder)
    return CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=77)


def _save_tokenizer(tokenizer, folder: Path) -> None:
    """save_pretrained writes tokenizer.json only; real SD folders also carry vocab.json and merges.txt."""
    tokenizer.save_pretrained(folder)
    write_tiny_vocab(folder)


def save_tiny_sd(folder: Path, prediction_type: str = "epsilon", *, xl: bool = False, seed: int = 0,
                 unet_overrides: dict | None = None, safe_serialization: bool = True) -> Path:
    """Save a tiny random StableDiffusionPipeline (or StableDiffusionXLPipeline) to `folder`: 32x32 latents, 64 px."""
    import tempfile

    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**(TINY_SDXL_UNET if xl else TINY_SD_UNET), **(unet_overrides or {})})
    vae = AutoencoderKL(**TINY_VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_CLIP))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, prediction_type=prediction_type, steps_offset=1)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny_tokenizer(Path(tmp))
    parts = dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
    if xl:
        parts |= dict(text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**TINY_CLIP)), tokenizer_2=tokenizer)
        pipe = StableDiffusionXLPipeline(**parts)
    else:
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=safe_serialization)
    for name in ("tokenizer", "tokenizer_2") if xl else ("tokenizer",):
        _save_tokenizer(tokenizer, Path(folder) / name)
    return Path(folder)


def write_prompts(path: Path, prompts=("a red circle on the left", "a blue square", "the dog at the top")) -> Path:
    """A prompt file, one prompt a line (core/prompts.py)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(p + "\n" for p in prompts))
    return path


# Captions of the shapes grammar (core/shapes.py), for the alignment metric.
SHAPES_PROMPTS = ("a small red circle on the left, on a white background",
                  "a large blue square at the top and a small green star at the bottom, on a black background",
                  "a small yellow triangle in the centre, on a gray background")


def write_shapes_prompts(path: Path) -> Path:
    """A prompt file of SHAPES_PROMPTS."""
    return write_prompts(path, SHAPES_PROMPTS)


def write_image_folder(folder: Path, count: int = 5, size: int = 64, seed: int = 0) -> Path:
    """An image folder (core/datasets.py): `count` random RGB PNGs of size x size and a metadata.jsonl captioning each."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img-{i}.png")
        lines.append(json.dumps({"file_name": f"img-{i}.png", "text": f"picture number {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder
