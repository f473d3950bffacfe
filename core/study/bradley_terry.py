"""Bradley-Terry maximum likelihood anchored at the teacher (docs/study.md#bradley-terry-anchored-at-the-teacher).

P(i beats j) = 1 / (1 + 10^((R_j - R_i) / 400)). The fit works in natural-log units theta = R / SCALE, on unique
(a, b, score) rows weighted by counts (or by bootstrap draw counts or sampling weights), with scipy's L-BFGS-B and an
analytic gradient, as lm-sys/FastChat's `rating_systems.py` does. A tie or "both bad" has score 0.5: half a win each.

Anchor: the teacher's theta is fixed at 0 during the fit (which also removes the model's translation freedom), and
ratings are reported as 1000 + SCALE * theta, so a student's rating reads as its gap to the teacher.

Separation: a variant that wins (or loses) every comparison has no finite MLE. A tiny ridge, RIDGE/2 * sum(theta^2)
on the gaps to the teacher (a Gaussian prior with sd 1/sqrt(RIDGE) ~ 32 logits ~ 5,500 points, see
lucasmaystre/choix:docs/regularization.rst), keeps the fit finite; such a variant is also reported as unbounded.
With 50 votes per pair the ridge moves a rating by about RIDGE * theta / 12 logits, far below 0.01 points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.special import expit

SCALE = 400 / np.log(10)  # rating points per logit
ANCHOR = 1000.0  # the teacher's rating
RIDGE = 1e-3  # on theta (logits); see the module docstring


@dataclass(frozen=True)
class BTFit:
    """Anchored ratings (teacher = 1000) of `variants`, in their order."""

    variants: tuple[str, ...]
    ratings: np.ndarray
    teacher: str
    n_votes: float  # total weight fitted
    seat: float | None = None  # left-seat advantage in rating points when fitted with a seat term
    unbounded: dict[str, str] = field(default_factory=dict)  # variant -> "+inf" (won everything) or "-inf"


def incidence(a: np.ndarray, b: np.ndarray, n_items: int, anchor: int, seat: np.ndarray | None = None) -> np.ndarray:
    """Design matrix (rows x free parameters): +1 for a, -1 for b, the anchor's column dropped, a seat column last."""
    design = np.zeros((len(a), n_items))
    np.add.at(design, (np.arange(len(a)), a), 1.0)
    np.add.at(design, (np.arange(len(b)), b), -1.0)
    design = np.delete(design, anchor, axis=1)
    return design if seat is None else np.column_stack([design, seat])


def fit_weighted(design: np.ndarray, score: np.ndarray, weights: np.ndarray, *, init: np.ndarray | None = None,
                 ridge: float = RIDGE) -> np.ndarray:
    """MLE of R independent weighted fits at once: weights (R, rows) -> free parameters (R, columns of `design`), logits.

    The objective is the sum over replicates of (negative log-likelihood + ridge/2 |theta|^2) / total weight; the sum
    is separable, so one L-BFGS-B call solves every replicate (the division only rescales each one's gradient).
    """
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    reps, cols = weights.shape[0], design.shape[1]
    total = np.maximum(weights.sum(1, keepdims=True), 1e-12)
    w, lam = weights / total, ridge / total

    def fun(flat: np.ndarray) -> tuple[float, np.ndarray]:
        theta = flat.reshape(reps, cols)
        d = theta @ design.T
        nll = w * (score * np.logaddexp(0.0, -d) + (1.0 - score) * np.logaddexp(0.0, d))
        grad = (w * (expit(d) - score)) @ design + lam * theta
        return float(nll.sum() + 0.5 * (lam * theta**2).sum()), grad.ravel()

    x0 = np.zeros(reps * cols) if init is None else np.broadcast_to(init, (reps, cols)).ravel().copy()
    res = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-10})
    if np.abs(res.jac).max() > 1e-6:
        raise RuntimeError(f"Bradley-Terry: L-BFGS-B stopped with gradient {np.abs(res.jac).max():.1e}: {res.message}")
    return res.x.reshape(reps, cols)


def to_ratings(free: np.ndarray, anchor: int, n_items: int) -> np.ndarray:
    """Free logits (R, n-1[+seat]) -> anchored ratings (R, n) in points, the anchor at exactly ANCHOR."""
    theta = np.insert(free[:, : n_items - 1], anchor, 0.0, axis=1)
    return ANCHOR + SCALE * theta


def check_connected(variants: tuple[str, ...], a: np.ndarray, b: np.ndarray, teacher: str) -> None:
    """Refuse a comparison graph without the teacher or not connected to it, naming the variants cut off."""
    if teacher not in variants:
        raise ValueError(f"Bradley-Terry: the teacher '{teacher}' has no comparisons; variants are {list(variants)}")
    n = len(variants)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    cut = [v for v, lab in zip(variants, label) if lab != label[variants.index(teacher)]]
    if cut:
        raise ValueError(f"Bradley-Terry: the comparison graph is disconnected; not connected to the teacher "
                         f"'{teacher}': {cut}")


def unbounded_variants(variants: tuple[str, ...], a: np.ndarray, b: np.ndarray, score: np.ndarray,
                       weights: np.ndarray) -> dict[str, str]:
    """Variants that won (+inf) or lost (-inf) every comparison they took part in: no finite MLE."""
    n = len(variants)
    played = np.bincount(a, weights, n) + np.bincount(b, weights, n)
    won = np.bincount(a, weights * score, n) + np.bincount(b, weights * (1 - score), n)
    out = {}
    for v, p, s in zip(variants, played, won):
        if p > 0 and np.isclose(s, p):
            out[v] = "+inf"
        elif p > 0 and np.isclose(s, 0.0):
            out[v] = "-inf"
    return out


def aggregate(a: np.ndarray, b: np.ndarray, score: np.ndarray, weights: np.ndarray, *extra: np.ndarray) -> list:
    """Unique (a, b, score, *extra) rows with summed weights: [a, b, score, *extra, weight] as arrays."""
    frame = pd.DataFrame({f"k{i}": col for i, col in enumerate((a, b, score, *extra))})
    frame["w"] = weights
    grouped = frame.groupby(list(frame.columns[:-1]), sort=False, observed=True)["w"].sum().reset_index()
    return [grouped[c].to_numpy() for c in grouped.columns]


def index_variants(a, b, teacher: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Sorted variant ids and integer codes of a and b."""
    a, b = np.asarray(a, dtype=str), np.asarray(b, dtype=str)
    variants, codes = np.unique(np.concatenate([a, b]), return_inverse=True)
    return tuple(str(v) for v in variants), codes[: len(a)].astype(int), codes[len(a):].astype(int)


def fit_bt(a, b, score, *, teacher: str, weights=None, seat=None, ridge: float = RIDGE) -> BTFit:
    """Anchored Bradley-Terry fit of outcomes `score` (1: a won, 0: b won, 0.5: tie) between variant ids a and b.

    `weights` (default 1 per row) carry counts, bootstrap draws or sampling weights; `seat` (+1 when a sat left, -1
    when b did) adds a left-seat term, reported in rating points as `BTFit.seat`.
    """
    score = np.asarray(score, dtype=float)
    weights = np.ones(len(score)) if weights is None else np.asarray(weights, dtype=float)
    variants, ai, bi = index_variants(a, b, teacher)
    extra = () if seat is None else (np.asarray(seat, dtype=float),)
    ai, bi, s, *rest, w = aggregate(ai, bi, score, weights, *extra)
    keep = w > 0
    ai, bi, s, w, rest = ai[keep].astype(int), bi[keep].astype(int), s[keep], w[keep], [r[keep] for r in rest]
    check_connected(variants, ai, bi, teacher)
    anchor = variants.index(teacher)
    free = fit_weighted(incidence(ai, bi, len(variants), anchor, *rest), s, w[None, :], ridge=ridge)
    return BTFit(variants=variants, ratings=to_ratings(free, anchor, len(variants))[0], teacher=teacher, n_votes=float(w.sum()),
                 seat=float(SCALE * free[0, -1]) if rest else None,
                 unbounded=unbounded_variants(variants, ai, bi, s, w))


def win_probability(r_i, r_j):
    """P(i beats j) for ratings in points."""
    return 1.0 / (1.0 + 10.0 ** ((np.asarray(r_j) - np.asarray(r_i)) / 400.0))
