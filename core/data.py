"""Built-in benchmarks (docs/architecture.md#built-in-benchmarks): `toy2d-ring`, `toy2d-grid` and `digits`. All offline.

A benchmark gives batches as {"x": data, "cond": class ids or absent}, drawn from a generator the caller seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from core.gmm import GaussianMixture, grid, ring

DIGITS_SIZE = 16


@lru_cache(maxsize=2)
def digits_tensors(size: int = DIGITS_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 digits, bilinearly upscaled to size x size, in [-1, 1]: ([N,1,s,s], [N])."""
    from sklearn.datasets import load_digits  # shipped inside scikit-learn: no download

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # pixel values 0..16
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 2 - 1).contiguous(), torch.tensor(d.target, dtype=torch.long)


@dataclass(frozen=True)
class Benchmark:
    name: str
    data_shape: tuple[int, ...]
    num_classes: int
    mixture: GaussianMixture | None = None  # the exact data distribution, for toy2d

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> dict:
        if self.mixture is not None:
            return {"x": self.mixture.sample(batch_size, generator).float()}
        x, y = digits_tensors(self.data_shape[-1])
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=generator)
        return {"x": x[idx], "cond": y[idx]}


BENCHMARKS = {
    "toy2d-ring": Benchmark("toy2d-ring", (2,), 0, ring(8, radius=2.0, std=0.1)),
    "toy2d-grid": Benchmark("toy2d-grid", (2,), 0, grid(5, spacing=1.0, std=0.1)),
    "digits": Benchmark("digits", (1, DIGITS_SIZE, DIGITS_SIZE), 10),
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"benchmark: unknown name {name!r} (known: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]
