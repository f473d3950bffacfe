"""Distances between 2-D sample sets and a known Gaussian mixture: the toy2d benchmark's yardsticks.

Shared by the built-in teacher report, the quality benchmark and the outcome tests (docs/methods.md#outcome-tests).
"""

from __future__ import annotations

import torch

from core.gmm import GaussianMixture


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """V-statistic 2 E|X - Y| - E|X - X'| - E|Y - Y'| (>= 0; O(1/n) positive bias for equal laws)."""
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def sliced_w2(x: torch.Tensor, y: torch.Tensor, projections: int = 64, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance over fixed random directions; x and y must hold the same number of points."""
    if len(x) != len(y):
        raise ValueError(f"sliced_w2 needs equal sample counts, got {len(x)} and {len(y)}")
    dirs = torch.randn(projections, x.shape[1], generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    px, py = (x @ dirs.T).sort(0).values, (y @ dirs.T).sort(0).values
    return float(((px - py) ** 2).mean().sqrt())


def mode_scores(x: torch.Tensor, mixture: GaussianMixture, min_share: float = 0.01) -> dict:
    """A sample counts for its nearest mode when within 3 std of its centre. `covered` counts modes holding at least
    `min_share` of all samples; `quality` is the share of samples near any mode."""
    x = x.double()
    d = torch.cdist(x, mixture.means.double())
    nearest = d.argmin(1)
    near = d.min(1).values <= 3 * mixture.stds.double()[nearest]
    share = torch.bincount(nearest[near], minlength=mixture.means.shape[0]).double() / len(x)
    return {"covered": int((share >= min_share).sum()), "min_mode_share": float(share.min()),
            "quality": float(near.double().mean()), "shares": share.tolist()}


def toy_scores(x: torch.Tensor, mixture: GaussianMixture, ref_seed: int = 1) -> dict:
    """Mode scores plus energy distance and sliced W2 to an exact sample of the same size."""
    ref = mixture.sample(len(x), torch.Generator().manual_seed(ref_seed))
    x = x.double()
    scores = mode_scores(x, mixture)
    return {"covered": scores["covered"], "quality": scores["quality"], "energy": energy_distance(x, ref),
            "sliced_w2": sliced_w2(x, ref)}
