"""Simulated votes with known ratings, for tests, benchmarks and demos (the schema of `core.study.votes`).

Condition clustering: within condition c, P(a beats b) is drawn once per pair from Beta(kappa p, kappa (1 - p)) with
p the Bradley-Terry probability, so the marginal probability stays p (and the population BT fit is the truth) while
votes on one condition are correlated (intra-condition correlation 1 / (kappa + 1)); kappa = inf means no clustering.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from core.study.bradley_terry import win_probability


def simulate_votes(ratings: dict[str, float], *, votes: int, conditions: int = 50, raters: int = 10,
                   kappa: float = np.inf, tie_rate: float = 0.0, left_bias: dict[str, float] | None = None,
                   criterion: str = "quality", seed: int = 0) -> pd.DataFrame:
    """`votes` non-gold votes spread uniformly over variant pairs, conditions and raters.

    `left_bias` maps a rater index (as "r<k>") to the share of their votes on which they click left whatever they see.
    """
    rng = np.random.default_rng(seed)
    names = list(ratings)
    pairs = np.array(list(combinations(range(len(names)), 2)))
    r = np.array([ratings[n] for n in names], dtype=float)
    p = win_probability(r[pairs[:, 0]], r[pairs[:, 1]])
    p_cond = p[None, :] if np.isinf(kappa) else rng.beta(kappa * p, kappa * (1 - p), size=(conditions, len(pairs)))
    p_cond = np.broadcast_to(p_cond, (conditions, len(pairs)))

    pair = rng.integers(len(pairs), size=votes)
    cond = rng.integers(conditions, size=votes)
    rater = rng.integers(raters, size=votes)
    a_wins = rng.random(votes) < p_cond[cond, pair]
    tie = rng.random(votes) < tie_rate
    a_left = rng.random(votes) < 0.5
    a, b = pairs[pair, 0], pairs[pair, 1]
    choice = np.where(tie, np.where(rng.random(votes) < 0.5, "tie", "both_bad"), np.where(a_wins == a_left, "left", "right"))
    rater_id = np.array([f"r{k}" for k in range(raters)])[rater]
    for who, share in (left_bias or {}).items():
        choice = np.where((rater_id == who) & (rng.random(votes) < share), "left", choice)
    names_arr = np.array(names)
    return pd.DataFrame({
        "left": names_arr[np.where(a_left, a, b)], "right": names_arr[np.where(a_left, b, a)], "choice": choice,
        "criterion": criterion, "condition": np.char.add("c", cond.astype(str)), "rater": rater_id,
        "latency_ms": rng.lognormal(np.log(4000), 0.5, votes), "is_gold": False, "gold_expected": None,
        "repeat_of": None, "pair": np.char.add(f"{criterion[0]}p", np.arange(votes).astype(str)),
        "voted_at": 1.7e9 + np.arange(votes, dtype=float), "seq_in_session": rng.integers(1, 200, votes)})
