"""Per-pair binomial tests with Wilson intervals, Holm-corrected, and side-bias tests (docs/study.md#per-pair-tests).

For a variant pair with k wins of a among n decisive votes: `scipy.stats.binomtest(k, n, 0.5)`, and the Wilson
interval of a's win rate. The test assumes independent votes, so when bootstrap replicates are given the
cluster-bootstrap interval of the BT win probability is shown beside it and the wider of the two is the one that counts.
Side bias: the left image chosen among decisive votes, tested against 0.5, overall, per criterion and per rater; the
left-seat term of a BT fit (`fit_bt(..., seat=...)`) measures it in rating points.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from statsmodels.stats.multitest import multipletests

from core.study.bootstrap import difference_interval
from core.study.bradley_terry import win_probability
from core.study.matrices import pair_counts


def binomial_summary(k: int, n: int) -> dict:
    """Rate k/n, two-sided p-value against 0.5 and 95 % Wilson interval (None when n = 0)."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "p_value": None, "wilson_lower": None, "wilson_upper": None}
    test = binomtest(int(k), int(n), 0.5)
    ci = test.proportion_ci(confidence_level=0.95, method="wilson")
    return {"k": int(k), "n": int(n), "rate": k / n, "p_value": float(test.pvalue), "wilson_lower": float(ci.low),
            "wilson_upper": float(ci.high)}


def pair_tests(canon: pd.DataFrame, boot_samples: np.ndarray | None = None, variants=None) -> list[dict]:
    """One row per variant pair: a's decisive win rate, p-value, Holm-adjusted p-value, Wilson interval and, with
    `boot_samples` (replicates x `variants` ratings), the cluster-bootstrap interval of P(a beats b)."""
    rows = []
    for pair in pair_counts(canon).itertuples():
        row = {"a": pair.a, "b": pair.b, "ties": int(pair.ties), "both_bad": int(pair.both_bad),
               **binomial_summary(pair.a_wins, pair.a_wins + pair.b_wins)}
        if boot_samples is not None:
            lo, hi = difference_interval(boot_samples, list(variants).index(pair.a), list(variants).index(pair.b))
            row["cluster_lower"], row["cluster_upper"] = float(win_probability(lo, 0)), float(win_probability(hi, 0))
            if row["n"]:
                cluster_width = row["cluster_upper"] - row["cluster_lower"]
                row["wider_interval"] = "cluster" if cluster_width > row["wilson_upper"] - row["wilson_lower"] else "wilson"
        rows.append(row)
    tested = [r for r in rows if r["p_value"] is not None]
    if tested:
        adjusted = multipletests([r["p_value"] for r in tested], method="holm")[1]
        for r, p in zip(tested, adjusted):
            r["p_holm"] = float(p)
    return rows


def side_bias(votes: pd.DataFrame, by: str | None = None) -> dict | list[dict]:
    """Left chosen among decisive votes against 0.5, overall (by=None) or one row per value of column `by`."""
    decisive = votes[votes["choice"].isin(("left", "right"))]
    if by is None:
        return binomial_summary(int((decisive["choice"] == "left").sum()), len(decisive))
    return [{by: key, **binomial_summary(int((group["choice"] == "left").sum()), len(group))}
            for key, group in decisive.groupby(by, sort=True)]


def seat_outcomes(votes: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(left, right, score of left, seat = 1) for a BT fit with a left-seat term."""
    choice = votes["choice"].to_numpy()
    score = np.where(choice == "left", 1.0, np.where(choice == "right", 0.0, 0.5))
    return votes["left"].to_numpy(str), votes["right"].to_numpy(str), score, np.ones(len(votes))
