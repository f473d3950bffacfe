"""Votes needed, half-widths, provisional marking and adaptive sampling weights."""

import numpy as np
import pytest

from core.study.planning import (
    decisive_votes_needed,
    half_width,
    rating_status,
    sampling_weights,
    votes_needed,
    votes_needed_table,
)


def test_votes_needed_table_of_study_md():
    # docs/study.md#votes-needed.
    assert [decisive_votes_needed(p) for p in (0.55, 0.60, 0.65, 0.70, 0.75)] == [783, 194, 85, 47, 29]
    assert [round(100 * half_width(n), 1) for n in (50, 100, 200, 400, 1000)] == [13.9, 9.8, 6.9, 4.9, 3.1]


def test_ties_and_design_effect_scale_the_total():
    assert votes_needed(0.6, tie_rate=0.2) == 243  # 194 / 0.8 = 242.5: 20 % ties need 25 % more votes
    assert votes_needed(0.6, deff=2.0) == 388
    table = votes_needed_table(tie_rate=0.2)
    assert table["needed"][1] == {"p": 0.6, "decisive": 194, "total": 243}
    with pytest.raises(ValueError, match="tie_rate"):
        votes_needed(0.6, tie_rate=1.0)


def test_rating_status_thresholds():
    assert rating_status(60, 500) == "provisional"
    assert rating_status(40, 99) == "provisional"
    assert rating_status(40, 100) == "usable"
    assert rating_status(25, 100) == "established"
    assert rating_status(30, 100, established=30) == "established"


def test_adaptive_weights_respect_cap_and_teacher_share():
    pairs = [("t", "a"), ("t", "b"), ("t", "c"), ("a", "b"), ("a", "c"), ("b", "c")]
    counts = [40] * 6
    widths = [10.0, 10.0, 10.0, 200.0, 150.0, 5.0]  # the student pairs are the widest
    w = sampling_weights(pairs, widths, counts, teacher="t", min_votes=30, cap=3.0)
    teacher = np.array([p[0] == "t" for p in pairs])
    assert w.sum() == pytest.approx(1.0) and (w > 0).all()
    assert w.max() / w.min() <= 3.0 + 1e-9
    assert w[teacher].sum() == pytest.approx(0.5)  # pulled up to exactly half
    assert w[3] > w[4] > w[5]  # wider intervals still get more


def test_adaptive_weights_wait_for_minimum_votes_and_favour_wide_teacher_pairs():
    pairs = [("t", "a"), ("t", "b"), ("a", "b")]
    assert np.allclose(sampling_weights(pairs, [5, 100, 1], [10, 40, 40], teacher="t", min_votes=30), 1 / 3)
    w = sampling_weights(pairs, [5, 100, 1], [40, 40, 40], teacher="t", min_votes=30)
    assert w[1] == pytest.approx(3 * w[0]) and w[2] == pytest.approx(w[0])  # clipped at max / 3


def test_adaptive_weights_refuse_an_impossible_teacher_share():
    variants = [f"s{k}" for k in range(10)]
    pairs = [("t", v) for v in variants] + [(v, u) for k, v in enumerate(variants) for u in variants[k + 1:]]
    with pytest.raises(ValueError, match="cannot hold half"):
        sampling_weights(pairs, np.ones(len(pairs)), np.full(len(pairs), 50), teacher="t", cap=3.0)
