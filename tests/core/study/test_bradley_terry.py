"""Bradley-Terry fit: agreement with choix, recovery of known ratings, anchoring, connectivity, separation, ties."""

import choix
import numpy as np
import pandas as pd
import pytest

from core.study.bootstrap import bootstrap_ratings
from core.study.bradley_terry import SCALE, fit_bt
from core.study.simulate import simulate_votes
from core.study.votes import canonical_outcomes, validate_votes

TRUE = {"t": 0.0, "s1": -60.0, "s2": -150.0, "s3": 40.0}


def _canon(votes: pd.DataFrame) -> pd.DataFrame:
    return canonical_outcomes(votes)


def test_matches_an_independent_choix_fit():
    canon = _canon(simulate_votes(TRUE, votes=4000, seed=1))
    fit = fit_bt(canon["a"], canon["b"], canon["score"], teacher="t")
    index = {v: k for k, v in enumerate(fit.variants)}
    data = [(index[a], index[b]) if s == 1 else (index[b], index[a]) for a, b, s in zip(canon["a"], canon["b"], canon["score"])]
    theta = choix.opt_pairwise(len(index), data, alpha=0.0, method="Newton-CG")  # natural-log strengths, unregularised
    theirs = 1000 + SCALE * (theta - theta[index["t"]])
    # Both are the same MLE up to optimiser tolerance (gtol 1e-10 here) and our ridge (1e-3 on ~1,300 votes per pair
    # shifts a rating by ~1e-3 * 1 logit / 300 ~ 6e-4 points); 0.01 points is far below any reported digit yet 1000x
    # smaller than the ratings' standard errors (~10 points), so a wrong scale, sign or anchor fails.
    np.testing.assert_allclose(fit.ratings, theirs, atol=0.01)
    assert fit.ratings[index["t"]] == 1000.0


def test_recovers_true_ratings_within_a_few_standard_errors():
    votes = simulate_votes(TRUE, votes=30000, seed=2)
    canon = _canon(votes)
    fit = fit_bt(canon["a"], canon["b"], canon["score"], teacher="t")
    boot = bootstrap_ratings(canon["a"], canon["b"], canon["score"], None, teacher="t", n_boot=200, seed=0)
    se = np.nanstd(boot.samples, axis=0)
    truth = np.array([1000 + TRUE[v] for v in fit.variants])
    students = np.array([v != "t" for v in fit.variants])
    assert (se[students] > 1).all() and (se[students] < 15).all()
    assert (np.abs(fit.ratings - truth)[students] < 4 * se[students]).all(), (fit.ratings, truth, se)


def test_weights_equal_repeated_rows():
    rows = [("t", "s", 1.0, 3), ("t", "s", 0.0, 1), ("s", "u", 1.0, 2), ("u", "s", 1.0, 1), ("u", "t", 0.5, 2)]
    weighted = fit_bt(*zip(*[r[:3] for r in rows]), teacher="t", weights=[r[3] for r in rows])
    repeated = fit_bt(*zip(*[r[:3] for r in rows for _ in range(r[3])]), teacher="t")
    np.testing.assert_allclose(weighted.ratings, repeated.ratings, atol=1e-6)
    assert abs(weighted.ratings[0] - 1000) > 50  # not a trivial all-equal fit


def test_disconnected_graph_is_refused_naming_the_variants():
    with pytest.raises(ValueError, match=r"not connected to the teacher 't': \['x', 'y'\]"):
        fit_bt(["t", "t", "x"], ["s", "s", "y"], [1.0, 0.0, 1.0], teacher="t")
    with pytest.raises(ValueError, match="teacher 'T' has no comparisons"):
        fit_bt(["a"], ["b"], [1.0], teacher="T")


def test_separation_is_finite_and_reported_unbounded():
    # s beats t once and loses once; u loses every comparison: no finite MLE for u.
    fit = fit_bt(["s", "s", "t", "t", "s"], ["t", "t", "u", "u", "u"], [1.0, 0.0, 1.0, 1.0, 1.0], teacher="t")
    r = dict(zip(fit.variants, fit.ratings))
    assert fit.unbounded == {"u": "-inf"}
    assert np.isfinite(r["u"]) and r["u"] < 1000 - 800  # pushed far down by the data, held finite by the ridge
    assert abs(r["s"] - 1000) < 50


def test_ties_count_as_half_wins():
    base = (["t"] * 20, ["s"] * 20, [1.0] * 12 + [0.0] * 8)
    decisive = fit_bt(*base, teacher="t")
    with_ties = fit_bt(base[0] + ["t"] * 20, base[1] + ["s"] * 20, base[2] + [0.5] * 20, teacher="t")
    gap = lambda fit: 1000 - dict(zip(fit.variants, fit.ratings))["s"]  # noqa: E731
    # Without ties the gap is 400 log10(12/8) = 70.4 points; 20 half-wins make it 22/18: 400 log10(22/18) = 34.9.
    assert gap(decisive) == pytest.approx(400 * np.log10(12 / 8), abs=0.05)
    assert gap(with_ties) == pytest.approx(400 * np.log10(22 / 18), abs=0.05)


def test_seat_term_measures_a_left_advantage():
    votes = simulate_votes(TRUE, votes=8000, seed=3, left_bias={f"r{k}": 0.3 for k in range(10)})
    choice = votes["choice"].to_numpy()
    score = np.where(choice == "left", 1.0, np.where(choice == "right", 0.0, 0.5))
    fit = fit_bt(votes["left"], votes["right"], score, teacher="t", seat=np.ones(len(votes)))
    # 30 % forced left clicks: P(left) ~ 0.3 + 0.7 * 0.5 = 0.65 on an even pair, a seat term of ~400 log10(0.65/0.35).
    assert 80 < fit.seat < 135
    unbiased = simulate_votes(TRUE, votes=8000, seed=3)
    c2 = unbiased["choice"].to_numpy()
    s2 = np.where(c2 == "left", 1.0, np.where(c2 == "right", 0.0, 0.5))
    assert abs(fit_bt(unbiased["left"], unbiased["right"], s2, teacher="t", seat=np.ones(len(unbiased))).seat) < 15


def test_schema_errors_name_the_column():
    votes = simulate_votes(TRUE, votes=20, seed=0)
    validate_votes(votes)
    with pytest.raises(ValueError, match="missing column.*'rater'"):
        validate_votes(votes.drop(columns="rater"))
    with pytest.raises(ValueError, match="column 'choice' has values outside.*'lft'"):
        validate_votes(votes.assign(choice=["lft"] + list(votes["choice"][1:])))
    with pytest.raises(ValueError, match="column 'is_gold' must be bool"):
        validate_votes(votes.assign(is_gold=0))
    with pytest.raises(ValueError, match="'gold_expected' is empty"):
        validate_votes(votes.assign(is_gold=True))


def test_canonical_outcome_ignores_the_side():
    votes = simulate_votes(TRUE, votes=2, seed=0).iloc[:1]
    row = votes.iloc[0]
    swapped = votes.assign(left=row["right"], right=row["left"], choice={"left": "right", "right": "left"}.get(row["choice"]))
    one, two = canonical_outcomes(votes).iloc[0], canonical_outcomes(swapped).iloc[0]
    assert (one["a"], one["b"], one["winner"], one["score"]) == (two["a"], two["b"], two["winner"], two["score"])
