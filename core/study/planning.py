"""Planning: votes still needed, provisional marking and adaptive pair-sampling weights (docs/study.md#votes-needed).

Votes needed for one student against the teacher (decisive votes, two-sided binomial test at level alpha with the
given power, normal approximation): n = (z_{1-alpha/2} * 0.5 + z_power * sqrt(p (1 - p)))^2 / (p - 0.5)^2, divided by
(1 - tie rate) and multiplied by the design effect 1 + (m - 1) * rho for m votes per condition with intra-condition
correlation rho.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

PREFERENCES = (0.55, 0.60, 0.65, 0.70, 0.75)
VOTE_COUNTS = (50, 100, 200, 400, 1000)


def decisive_votes_needed(p: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Decisive votes for a two-sided binomial test of preference p against 0.5."""
    if not 0 < p < 1 or p == 0.5:
        raise ValueError(f"planning: preference p must be in (0, 1) and not 0.5, got {p}")
    z_a, z_b = norm.ppf(1 - alpha / 2), norm.ppf(power)
    return math.ceil((z_a * 0.5 + z_b * math.sqrt(p * (1 - p))) ** 2 / (p - 0.5) ** 2)


def votes_needed(p: float, *, tie_rate: float = 0.0, deff: float = 1.0, alpha: float = 0.05, power: float = 0.8) -> int:
    """All votes (ties included) for preference p, given the tie rate and design effect."""
    if not 0 <= tie_rate < 1:
        raise ValueError(f"planning: tie_rate must be in [0, 1), got {tie_rate}")
    return math.ceil(decisive_votes_needed(p, alpha=alpha, power=power) * deff / (1 - tie_rate))


def half_width(n: int, *, p: float = 0.5, level: float = 0.95) -> float:
    """Half-width of the normal interval of a win rate near p from n decisive votes (a proportion, not points)."""
    return float(norm.ppf(0.5 + level / 2) * math.sqrt(p * (1 - p) / n))


def votes_needed_table(*, tie_rate: float = 0.0, deff: float = 1.0, preferences=PREFERENCES, counts=VOTE_COUNTS) -> dict:
    """The two tables of §3.10 filled in with the observed tie rate and design effect."""
    return {"tie_rate": tie_rate, "design_effect": deff,
            "needed": [{"p": p, "decisive": decisive_votes_needed(p), "total": votes_needed(p, tie_rate=tie_rate, deff=deff)}
                       for p in preferences],
            "half_width": [{"decisive": n, "half_width_points": 100 * half_width(n)} for n in counts]}


def rating_status(half_width_points: float, decisive: int, *, usable: float = 50.0, established: float = 25.0,
                  min_decisive: int = 100) -> str:
    """provisional / usable / established from a rating's CI half-width (rating points) and its decisive votes."""
    if decisive < min_decisive or not np.isfinite(half_width_points) or half_width_points > usable:
        return "provisional"
    return "established" if half_width_points <= established else "usable"


def sampling_weights(pairs, widths, counts, *, teacher: str, min_votes: int = 30, cap: float = 3.0) -> np.ndarray:
    """Assignment weights per variant pair (summing to 1) that favour the widest intervals (§3.12).

    Uniform until every pair with the teacher has `min_votes`; then proportional to `widths`, clipped so that
    max/min <= `cap` (no weight is 0), and, if pairs with the teacher then hold less than half the weight, moved
    linearly toward teacher pairs at the top and other pairs at the floor until they hold exactly half.
    """
    widths, counts = np.asarray(widths, dtype=float), np.asarray(counts, dtype=float)
    with_teacher = np.array([teacher in pair for pair in pairs])
    if not with_teacher.any():
        raise ValueError(f"planning: no pair includes the teacher '{teacher}'")
    if cap < 1:
        raise ValueError(f"planning: cap must be >= 1, got {cap}")
    if (counts[with_teacher] < min_votes).any() or not np.isfinite(widths).all() or widths.max() <= 0:
        w = np.ones(len(widths))
    else:
        w = np.clip(widths / widths.max(), 1.0 / cap, 1.0)
    t_sum, o_sum = w[with_teacher].sum(), w[~with_teacher].sum()
    if t_sum < o_sum:  # move teacher pairs toward 1 and the others toward 1/cap by the same fraction t
        n_t, n_o = with_teacher.sum(), (~with_teacher).sum()
        room = (n_t - t_sum) + (o_sum - n_o / cap)
        t = (o_sum - t_sum) / room if room > 0 else np.inf
        if t > 1:
            raise ValueError(f"planning: with cap {cap}, {n_t} pairs with the teacher cannot hold half of the weight "
                             f"against {n_o} other pairs")
        w = np.where(with_teacher, w + t * (1 - w), w - t * (w - 1.0 / cap))
    return w / w.sum()
