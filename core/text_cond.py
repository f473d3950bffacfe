"""The condition a text-to-image denoiser carries: encoded prompts (docs/methods.md#guidance).

A `TextCond` holds one row per sample: the prompt embeddings [B, L, D] and, for SDXL, the pooled embedding [B, P] and
the six added time ids [B, 6]. It behaves like the class-id tensor the samplers and CFG pass around: it has a length,
indexes and slices by batch, concatenates along the batch (CFG runs both halves as one UNet call) and moves devices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextCond:
    embeds: torch.Tensor                 # [B, L, D] encoder_hidden_states
    pooled: torch.Tensor | None = None   # [B, P] SDXL: text_encoder_2's projected embedding
    time_ids: torch.Tensor | None = None  # [B, 6] SDXL: original size, crop top-left, target size

    def __post_init__(self):
        if self.embeds.ndim != 3:
            raise ValueError(f"text condition: embeddings must be [B, L, D], got {tuple(self.embeds.shape)}")
        if (self.pooled is None) != (self.time_ids is None):
            raise ValueError("text condition: pooled embeddings and time ids come together (SDXL) or not at all")
        for part in (self.pooled, self.time_ids):
            if part is not None and (part.ndim != 2 or part.shape[0] != self.embeds.shape[0]):
                raise ValueError(f"text condition: {tuple(part.shape)} does not match the batch of {len(self)}")

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def _map(self, fn) -> TextCond:
        return TextCond(fn(self.embeds), *(None if p is None else fn(p) for p in (self.pooled, self.time_ids)))

    def __getitem__(self, index) -> TextCond:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)  # a row stays a batch of one
        return self._map(lambda x: x[index])

    def to(self, device=None, dtype=None) -> TextCond:
        """Moves every tensor; `dtype` casts the floating embeddings (time ids are sizes and stay exact in float)."""
        return self._map(lambda x: x.to(device=device, dtype=dtype or x.dtype))

    def expand(self, batch: int) -> TextCond:
        """A batch-of-one condition (the null condition) repeated to `batch` rows."""
        if len(self) != 1:
            raise ValueError(f"text condition: only a batch of one expands, this one has {len(self)}")
        return self._map(lambda x: x.expand(batch, *x.shape[1:]))

    @property
    def device(self) -> torch.device:
        return self.embeds.device

    @staticmethod
    def cat(conds) -> TextCond:
        conds = list(conds)
        if len({c.pooled is None for c in conds}) > 1:
            raise ValueError("text condition: cannot concatenate SD and SDXL conditions")
        pooled = None if conds[0].pooled is None else torch.cat([c.pooled for c in conds])
        time_ids = None if conds[0].time_ids is None else torch.cat([c.time_ids for c in conds])
        return TextCond(torch.cat([c.embeds for c in conds]), pooled, time_ids)


def cat_cond(conds):
    """Concatenate conditions along the batch: class-id tensors or TextCond alike."""
    conds = list(conds)
    return TextCond.cat(conds) if isinstance(conds[0], TextCond) else torch.cat(conds)
