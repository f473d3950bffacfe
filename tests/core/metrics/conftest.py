"""Two folders of 200 digits PNGs each (real, and the same digits with Gaussian noise), written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.data import digits_tensors
from core.images import save_png, to_uint8

N_PNG = 200


def write_pngs(images: torch.Tensor, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, arr in enumerate(to_uint8(images)):
        save_png(arr, folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="session")
def digits_real() -> torch.Tensor:
    return digits_tensors(16)[0][:N_PNG]


@pytest.fixture(scope="session")
def digits_noisy(digits_real) -> torch.Tensor:
    noise = torch.randn(digits_real.shape, generator=torch.Generator().manual_seed(0))
    return (digits_real + 0.3 * noise).clamp(-1, 1)


@pytest.fixture(scope="session")
def png_dirs(tmp_path_factory, digits_real, digits_noisy) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("digits-png")
    return write_pngs(digits_real, root / "real"), write_pngs(digits_noisy, root / "noisy")
