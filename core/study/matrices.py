"""Pairwise matrices of one criterion (docs/study.md#ranks-and-matrices): observed win rates across both seat
orders, comparison counts, BT-predicted win probabilities and residuals (observed - predicted, which expose
intransitive pairs), and tie and both-bad rates. Every matrix is variants x variants as nested lists, row i against
column j, None where undefined.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.study.bradley_terry import win_probability


def pair_counts(canon: pd.DataFrame) -> pd.DataFrame:
    """Per unordered pair (a, b): comparisons n, wins of a, wins of b, ties and both-bad votes."""
    grouped = canon.groupby(["a", "b"], sort=True)
    return pd.DataFrame({"n": grouped.size(), "a_wins": grouped["label"].apply(lambda x: int((x == "a").sum())),
                         "b_wins": grouped["label"].apply(lambda x: int((x == "b").sum())),
                         "ties": grouped["label"].apply(lambda x: int((x == "tie").sum())),
                         "both_bad": grouped["label"].apply(lambda x: int((x == "both_bad").sum()))}).reset_index()


def win_matrices(canon: pd.DataFrame, variants, ratings=None) -> dict:
    """Count, win-rate ((wins + ties/2) / n, ties including both bad), tie-rate and both-bad-rate matrices; with
    `ratings` (aligned with `variants`) also the BT-predicted and residual matrices."""
    variants = list(variants)
    index = {v: k for k, v in enumerate(variants)}
    size = len(variants)
    count, win, tie, bad = (np.full((size, size), np.nan) for _ in range(4))
    for row in pair_counts(canon).itertuples():
        i, j = index[row.a], index[row.b]
        count[i, j] = count[j, i] = row.n
        half = 0.5 * (row.ties + row.both_bad)
        win[i, j], win[j, i] = (row.a_wins + half) / row.n, (row.b_wins + half) / row.n
        tie[i, j] = tie[j, i] = row.ties / row.n
        bad[i, j] = bad[j, i] = row.both_bad / row.n
    out = {"variants": variants, "count": _lists(np.nan_to_num(count, nan=0.0)), "win_rate": _lists(win),
           "tie_rate": _lists(tie), "both_bad_rate": _lists(bad)}
    if ratings is not None:
        r = np.asarray(ratings, dtype=float)
        predicted = win_probability(r[:, None], r[None, :])
        np.fill_diagonal(predicted, np.nan)
        out["predicted"], out["residual"] = _lists(predicted), _lists(win - predicted)
    return out


def _lists(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(x) else float(x) for x in row] for row in matrix]
