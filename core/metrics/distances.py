"""Distances between two sets of features [N,D]: FID, KID, and precision/recall/density/coverage. Pure numpy."""

from __future__ import annotations

import contextlib
import io

import numpy as np


def _features(f, what: str, min_n: int = 2) -> np.ndarray:
    f = np.asarray(f)
    if f.ndim != 2:
        raise ValueError(f"{what}: features must be a 2-D array [N, D], got shape {f.shape}")
    if f.shape[0] < min_n:
        raise ValueError(f"{what}: needs at least {min_n} feature vectors, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError(f"{what}: features contain NaN or infinity")
    return f


def _pair(f1, f2, what: str, min_n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    f1, f2 = _features(f1, what, min_n), _features(f2, what, min_n)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"{what}: feature sizes differ ({f1.shape[1]} vs {f2.shape[1]})")
    return f1, f2


def feature_stats(f) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) as clean-fid computes them, for caching reference statistics."""
    f = _features(f, "fid")
    return np.mean(f, axis=0), np.cov(f, rowvar=False)


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017), clean-fid's code."""
    from cleanfid.fid import frechet_distance

    return float(frechet_distance(mu1, sigma1, mu2, sigma2))


def fid_from_features(f1, f2) -> float:
    """FID between two feature sets: clean-fid's fid_from_feats, on the features as given (as its folder FID does)."""
    f1, f2 = _pair(f1, f2, "fid")
    return fid_from_stats(*feature_stats(f1), *feature_stats(f2))


def kid_from_features(f1, f2, *, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018): clean-fid's kernel_distance with a seeded generator.

    Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over random subsets of
    m = min(N1, N2, max_subset_size) vectors. clean-fid draws the subsets from numpy's global generator; a local
    one makes the value reproducible. When m covers both sets the subsets are permutations and the values agree.
    """
    f1, f2 = (f.astype(np.float64) for f in _pair(f1, f2, "kid"))
    d = f1.shape[1]
    m = min(f1.shape[0], f2.shape[0], max_subset_size)
    rng = np.random.default_rng(seed)
    t = 0.0
    for _ in range(num_subsets):
        x = f2[rng.choice(f2.shape[0], m, replace=False)]
        y = f1[rng.choice(f1.shape[0], m, replace=False)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


def prdc(real, fake, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) on k-NN manifolds, by the authors' package.

    A point lies on a manifold when it is strictly closer to some sample than that sample's k-th nearest neighbour.
    Memory: three dense distance matrices (N_real x N_real, N_fake x N_fake, N_real x N_fake), float64.
    """
    from prdc import compute_prdc

    real, fake = (f.astype(np.float64) for f in _pair(real, fake, "prdc", min_n=1))
    if not 1 <= k < min(len(real), len(fake)):
        raise ValueError(f"prdc: k must be in [1, {min(len(real), len(fake)) - 1}] for {len(real)} real and "
                         f"{len(fake)} fake vectors, got {k}")
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes
        scores = compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    return {key: float(scores[key]) for key in ("precision", "recall", "density", "coverage")}
