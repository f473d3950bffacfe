"""Per-pair binomial tests, Holm correction and side-bias tests."""

import pandas as pd
import pytest
from scipy.stats import binomtest

from core.study.significance import pair_tests, side_bias
from core.study.simulate import simulate_votes
from core.study.votes import canonical_outcomes

TRUE = {"t": 0.0, "s1": -80.0, "s2": -10.0}


def test_pair_tests_match_scipy_and_holm_by_hand():
    canon = canonical_outcomes(simulate_votes(TRUE, votes=900, tie_rate=0.1, seed=4))
    rows = {(r["a"], r["b"]): r for r in pair_tests(canon)}
    sub = canon[(canon["a"] == "s1") & (canon["b"] == "t")]
    k, n = int((sub["label"] == "a").sum()), int(sub["label"].isin(["a", "b"]).sum())
    row = rows[("s1", "t")]
    assert (row["k"], row["n"]) == (k, n) and row["ties"] + row["both_bad"] == len(sub) - n
    assert row["p_value"] == pytest.approx(binomtest(k, n, 0.5).pvalue)
    ci = binomtest(k, n, 0.5).proportion_ci(method="wilson")
    assert (row["wilson_lower"], row["wilson_upper"]) == pytest.approx((ci.low, ci.high))
    # Holm by hand: sorted p multiplied by (m - rank), made monotone, capped at 1.
    ps = sorted(r["p_value"] for r in rows.values())
    holm = [min(1.0, max((3 - j) * ps[j] for j in range(i + 1))) for i in range(3)]
    assert sorted(r["p_holm"] for r in rows.values()) == pytest.approx(holm)


def test_side_bias_finds_the_left_biased_rater_only():
    votes = simulate_votes(TRUE, votes=3000, raters=6, seed=5, left_bias={"r2": 0.4})
    per_rater = {r["rater"]: r for r in side_bias(votes, "rater")}
    assert per_rater["r2"]["p_value"] < 1e-6 and per_rater["r2"]["rate"] > 0.65
    assert all(r["p_value"] > 0.001 for who, r in per_rater.items() if who != "r2")
    assert side_bias(votes)["n"] == int(votes["choice"].isin(["left", "right"]).sum())


def test_side_bias_per_criterion():
    votes = pd.concat([simulate_votes(TRUE, votes=1000, seed=6, criterion="quality", left_bias={"r0": 1.0, "r1": 1.0}),
                       simulate_votes(TRUE, votes=1000, seed=7, criterion="alignment")])
    rows = {r["criterion"]: r for r in side_bias(votes, "criterion")}
    assert rows["quality"]["p_value"] < 1e-6 and rows["alignment"]["p_value"] > 0.001
