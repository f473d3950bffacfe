"""Per-sample seeded noise: the noise of sample i depends only on its seed (docs/architecture.md#the-ml-library).

Each seed owns a generator that yields, in order, the initial latent and then one standard-normal draw per
re-noising step, so seed 17 gets the same noise in any batch, in any order, for any model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def seeded_noise(seeds: Sequence[int], shape: Sequence[int], draws: int = 1,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Noise bank of shape [draws, len(seeds), *shape]; draw 0 is the initial latent."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    out = torch.empty((draws, len(seeds), *shape), dtype=torch.float64)
    gen = torch.Generator(device="cpu")
    for i, seed in enumerate(seeds):
        gen.manual_seed(int(seed))
        # One call per draw, in float64 on the CPU: torch's normal sampler changes algorithm with tensor size,
        # so a single [draws, ...] call would make draw 0 depend on how many draws follow.
        for k in range(draws):
            out[k, i] = torch.randn(tuple(shape), generator=gen, dtype=torch.float64)
    return out.to(device=device, dtype=dtype)


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A distinct 63-bit seed per (run seed, step, stream): re-seeding per step makes resume exact."""
    mixed = int(seed) * 0x9E3779B97F4A7C15 + int(step) * 0xBF58476D1CE4E5B9 + int(stream) * 0x94D049BB133111EB
    return mixed % (2**63 - 1)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded with `step_seed(seed, step, stream)`."""
    return torch.Generator(device="cpu").manual_seed(step_seed(seed, step, stream))
