"""Network builders: small diffusers UNets for images, a plain MLP for 2-D data. No home-made UNet."""

from __future__ import annotations

import math

import torch
from torch import nn


class FourierTime(nn.Module):
    """Sinusoidal features of a scalar time input (log-SNR for the MLPs, scaled to roughly [-1, 1])."""

    def __init__(self, dim: int = 32, scale: float = 1.0 / 10.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(64.0), dim // 2)), persistent=False)
        self.scale = scale

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        arg = (time * self.scale)[:, None] * self.freqs[None, :].to(time.dtype)
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class MLP(nn.Module):
    """net(z, time, cond) for 2-D data: concat(z, fourier(time)[, class embedding]) -> SiLU MLP -> output."""

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 3, time_dim: int = 32, num_classes: int = 0):
        super().__init__()
        self.config = {"dim": dim, "hidden": hidden, "depth": depth, "time_dim": time_dim, "num_classes": num_classes}
        self.time = FourierTime(time_dim)
        self.class_embed = nn.Embedding(num_classes + 1, time_dim) if num_classes else None
        layers, width = [], dim + time_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.body = nn.Sequential(*layers)

    def forward(self, z, time, cond=None):
        emb = self.time(time.to(z.dtype))
        if self.class_embed is not None and cond is not None:
            emb = emb + self.class_embed(cond)
        return self.body(torch.cat([z, emb], dim=1))


def build_unet(sample_size: int = 16, channels: int = 1, num_classes: int = 0,
               block_out_channels=(32, 64, 64), layers_per_block: int = 1, attention: bool = True):
    """A small diffusers UNet2DModel; class-conditional models get num_classes + 1 embeddings (the last is null)."""
    from diffusers import UNet2DModel

    n = len(block_out_channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if attention and n >= 2:
        # Attention only at the coarsest resolution: cheap on CPU, enough global context for 16x16.
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        down_block_types=tuple(down), up_block_types=tuple(up),
        norm_num_groups=math.gcd(32, *block_out_channels),
        attention_head_dim=8,
        num_class_embeds=(num_classes + 1) if num_classes else None,
    )


def parameter_hash(module: nn.Module) -> str:
    """SHA-256 over state names, shapes and bytes: identifies a network's weights exactly."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
