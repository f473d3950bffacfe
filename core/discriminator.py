"""DMD2's GAN head H on the fake-score network's bottleneck features (docs/methods.md#dmd2-losses).

`FeatureTap` reads a module's output during a forward pass; with `stop=True` it ends the pass there, so the
discriminator costs only the encoder of A, not a full forward.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from core.denoisers import Denoiser


class _Stop(Exception):
    pass


class FeatureTap:
    """Captures the output of `module` on the next forward pass of the network it belongs to."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.features: torch.Tensor | None = None
        self.stop = False
        module.register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, output):
        self.features = output[0] if isinstance(output, tuple) else output
        if self.stop:
            raise _Stop

    def encode(self, denoiser: Denoiser, z_t, t, cond) -> torch.Tensor:
        """Run `denoiser` only up to the tapped module and return its features."""
        self.stop = True
        try:
            denoiser(z_t, t, cond)
        except _Stop:
            pass
        finally:
            self.stop = False
        assert self.features is not None, "FeatureTap: the tapped module did not run"
        feats, self.features = self.features, None
        return feats

    def run(self, denoiser: Denoiser, z_t, t, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """A full forward pass: (x0_hat, features)."""
        out = denoiser(z_t, t, cond)
        assert self.features is not None, "FeatureTap: the tapped module did not run"
        feats, self.features = self.features, None
        return out, feats


def bottleneck(denoiser: Denoiser) -> nn.Module:
    """The module whose output H reads: a diffusers UNet's mid block, or an MLP's last hidden activation."""
    net = getattr(denoiser, "net", None)
    unet = getattr(net, "unet", None)
    if unet is not None and getattr(unet, "mid_block", None) is not None:
        return unet.mid_block
    body = getattr(net, "body", None)
    if isinstance(body, nn.Sequential) and len(body) >= 2:
        return body[-2]
    raise ValueError("gan: the fake-score network has no known bottleneck (needs a diffusers UNet or the MLP)")


class ConvHead(nn.Module):
    """4x4 stride-2 conv + GroupNorm + SiLU down to 4x4, a 4x4 stride-4 conv to 1x1, then a 1x1 conv to one logit."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        if size < 4 or size & (size - 1):
            raise ValueError(f"gan: bottleneck size must be a power of two >= 4, got {size}")
        groups = math.gcd(32, channels)  # GroupNorm groups must divide the channels of tiny UNets
        layers: list[nn.Module] = []
        while size > 4:
            layers += [nn.Conv2d(channels, channels, 4, 2, 1), nn.GroupNorm(groups, channels), nn.SiLU()]
            size //= 2
        layers += [nn.Conv2d(channels, channels, 4, 4, 0), nn.GroupNorm(groups, channels), nn.SiLU(),
                   nn.Conv2d(channels, 1, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, feats):
        return self.body(feats).flatten(1).squeeze(1)


class MLPHead(nn.Module):
    """For 2-D toy networks: hidden features -> one logit."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 1))

    def forward(self, feats):
        return self.body(feats).squeeze(1)


def build_head(feature_shape: tuple[int, ...]) -> nn.Module:
    """A head for features of shape [C, H, W] or [C]."""
    if len(feature_shape) == 3:
        return ConvHead(feature_shape[0], feature_shape[1])
    if len(feature_shape) == 1:
        return MLPHead(feature_shape[0])
    raise ValueError(f"gan: unsupported feature shape {feature_shape}")
