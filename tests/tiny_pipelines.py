"""Tiny random diffusers DDPM pipelines for import tests (real `save_pretrained` folders, built in a temp dir)."""

from __future__ import annotations

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
