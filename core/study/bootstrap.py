"""Cluster bootstrap intervals for anchored Bradley-Terry ratings, and ranks that respect them (docs/study.md#bootstrap-by-cluster).

Votes on one condition (class/prompt) are correlated, and so are one rater's votes; resampling single votes, as
FastChat and GenAI-Arena do, gives intervals that are too narrow. Here whole clusters are drawn with replacement and
each vote is weighted by how often its cluster was drawn, so a replicate is a weighted refit. Votes are first reduced
to unique (a, b, score, cluster) rows, replicate weights are collapsed to unique (a, b, score) rows, and all replicates
are solved in one L-BFGS-B call warm-started at the point estimate. The teacher is re-anchored in every replicate, so
a student's interval is that of its gap to the teacher. Percentile intervals (2.5 / 97.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix

from core.study.bradley_terry import RIDGE, SCALE, aggregate, check_connected, fit_weighted, incidence, index_variants, to_ratings


@dataclass(frozen=True)
class BootstrapCI:
    """Replicate ratings (n_boot x variants; NaN where a replicate left a variant cut off from the teacher)."""

    variants: tuple[str, ...]
    samples: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    cluster: str  # what was resampled: "condition", "rater", "vote", ...
    n_boot: int
    seed: int
    seat_samples: np.ndarray | None = None  # left-seat term per replicate, rating points


def replicate_weights(weights: np.ndarray, clusters: np.ndarray | None, n_boot: int,
                      rng: np.random.Generator) -> np.ndarray:
    """(n_boot, rows) weights: each cluster's draw count times the row's weight; vote-level when clusters is None."""
    if clusters is None:  # FastChat's multinomial trick: resample single votes
        total = int(round(weights.sum()))
        return rng.multinomial(total, weights / weights.sum(), size=n_boot).astype(float)
    codes, uniques = pd.factorize(clusters)
    draws = rng.multinomial(len(uniques), np.full(len(uniques), 1.0 / len(uniques)), size=n_boot)
    return draws[:, codes] * weights


def reachable(weights: np.ndarray, a: np.ndarray, b: np.ndarray, n_items: int, anchor: int) -> np.ndarray:
    """(n_boot, n_items) bool: the variant is connected to the anchor by rows of positive weight in that replicate."""
    onehot_a, onehot_b = np.eye(n_items)[a], np.eye(n_items)[b]
    adj = np.einsum("rk,ki,kj->rij", weights > 0, onehot_a, onehot_b)
    adj = (adj + adj.transpose(0, 2, 1)) > 0
    reach = np.zeros((weights.shape[0], n_items), dtype=bool)
    reach[:, anchor] = True
    for _ in range(n_items - 1):
        reach = reach | (np.einsum("ri,rij->rj", reach, adj) > 0)
    return reach


def bootstrap_ratings(a, b, score, clusters=None, *, teacher: str, n_boot: int = 1000, seed: int = 0, weights=None,
                      seat=None, cluster_name: str = "condition", ridge: float = RIDGE) -> BootstrapCI:
    """Percentile intervals of anchored ratings from `n_boot` refits on clusters drawn with replacement.

    `clusters` holds each vote's cluster id (condition or rater); None resamples single votes. `weights` are per-vote
    (sampling) weights; `seat` adds a left-seat term as in `fit_bt`.
    """
    rng = np.random.default_rng(seed)
    score = np.asarray(score, dtype=float)
    weights = np.ones(len(score)) if weights is None else np.asarray(weights, dtype=float)
    variants, ai, bi = index_variants(a, b, teacher)
    anchor, n_items = variants.index(teacher), len(variants)
    extra = () if seat is None else (np.asarray(seat, dtype=float),)

    # 1. Unique (a, b, score[, seat][, cluster]) rows; replicate weights on them.
    if clusters is None:
        *keys, w = aggregate(ai, bi, score, weights, *extra)
        rep = replicate_weights(w, None, n_boot, rng)
    else:
        *keys, cl, w = aggregate(ai, bi, score, weights, *extra, pd.factorize(np.asarray(clusters))[0])
        rep = replicate_weights(w, cl, n_boot, rng)

    # 2. Collapse to unique (a, b, score[, seat]) rows: replicate weights times a rows -> unique-rows indicator.
    frame = pd.DataFrame({f"k{i}": k for i, k in enumerate(keys)})
    inverse = frame.groupby(list(frame.columns), sort=False).ngroup().to_numpy()
    unique = frame.groupby(list(frame.columns), sort=False).first().reset_index() if len(frame) else frame
    collapse = csr_matrix((np.ones(len(inverse)), (np.arange(len(inverse)), inverse)))
    rep = np.asarray((collapse.T @ rep.T).T)
    total = np.asarray(collapse.T @ w).ravel()
    ua, ub, us = (unique[f"k{i}"].to_numpy() for i in range(3))
    ua, ub = ua.astype(int), ub.astype(int)
    useat = (unique["k3"].to_numpy(),) if seat is not None else ()

    # 3. Point estimate (warm start), then every replicate in one call.
    check_connected(variants, ua[total > 0], ub[total > 0], teacher)
    design = incidence(ua, ub, n_items, anchor, *useat)
    point = fit_weighted(design, us, total[None, :], ridge=ridge)
    free = fit_weighted(design, us, rep, init=point, ridge=ridge)
    ratings = to_ratings(free, anchor, n_items)
    ratings[~reachable(rep, ua, ub, n_items, anchor)] = np.nan
    lower, upper = np.nanpercentile(ratings, [2.5, 97.5], axis=0)
    return BootstrapCI(variants=variants, samples=ratings, lower=lower, upper=upper, cluster=cluster_name,
                       n_boot=n_boot, seed=seed, seat_samples=SCALE * free[:, -1] if seat is not None else None)


def ci_ranks(lower, upper) -> np.ndarray:
    """rank(i) = 1 + the number of variants whose lower bound exceeds i's upper bound (overlapping variants tie)."""
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    return 1 + (lower[None, :] > upper[:, None]).sum(1)


def difference_interval(samples: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """2.5 / 97.5 percentiles of R_i - R_j over replicates (rating points)."""
    diff = samples[:, i] - samples[:, j]
    lo, hi = np.nanpercentile(diff, [2.5, 97.5])
    return float(lo), float(hi)
