"""Agreement statistics against small hand-computed cases."""

import numpy as np
import pandas as pd
import pytest

from core.study.agreement import agreement, cohen_pairs, fleiss, krippendorff_alpha


def _votes(labels_by_rater: dict[str, list[str | None]]) -> pd.DataFrame:
    """One vote per rater and unit; label 'a' = t wins, 'b' = u wins (t < u in sort order)."""
    rows = []
    for rater, labels in labels_by_rater.items():
        for unit, label in enumerate(labels):
            if label is not None:
                rows.append({"left": "t", "right": "u", "choice": {"a": "left", "b": "right"}[label], "criterion": "quality",
                             "condition": "c", "rater": rater, "latency_ms": 1.0, "is_gold": False, "gold_expected": None,
                             "repeat_of": None, "pair": f"p{unit}", "voted_at": 0.0, "seq_in_session": 1})
    return pd.DataFrame(rows)


def test_cohen_kappa_by_hand():
    # 40 shared units: both a 20, both b 10, a/b 5, b/a 5. p_o = 0.75, p_e = 0.625^2 + 0.375^2 = 0.53125,
    # kappa = (0.75 - 0.53125) / (1 - 0.53125) = 7/15.
    r1 = ["a"] * 20 + ["b"] * 10 + ["a"] * 5 + ["b"] * 5
    r2 = ["a"] * 20 + ["b"] * 10 + ["b"] * 5 + ["a"] * 5
    result = agreement(_votes({"r1": r1, "r2": r2}))
    assert result["cohen"] == [{"rater_a": "r1", "rater_b": "r2", "shared_units": 40, "kappa": pytest.approx(7 / 15)}]
    assert agreement(_votes({"r1": r1[:29], "r2": r2[:29]}))["cohen"] == []  # fewer than 30 shared units


def test_fleiss_and_krippendorff_by_hand():
    # Units x 3 raters: (a,a,a), (b,b,b), (a,a,b), (a,b,b).
    # Fleiss: P_i = 1, 1, 1/3, 1/3 -> P = 2/3; p_a = p_b = 1/2 -> P_e = 1/2; kappa = (2/3 - 1/2) / (1/2) = 1/3.
    # Krippendorff (nominal): coincidences o_aa = 4, o_bb = 4, o_ab = o_ba = 2, n = 12, n_a = n_b = 6:
    # alpha = 1 - (n - 1) (o_ab + o_ba) / (2 n_a n_b) = 1 - 11 * 4 / 72 = 7/18.
    votes = _votes({"r1": ["a", "b", "a", "a"], "r2": ["a", "b", "a", "b"], "r3": ["a", "b", "b", "b"]})
    result = agreement(votes)
    assert result["fleiss"] == {"units": 4, "ratings_per_unit": 3, "kappa": pytest.approx(1 / 3)}
    assert result["krippendorff_alpha"] == pytest.approx(7 / 18)


def test_missing_ratings_and_undefined_cases():
    # A fourth unit rated by two raters only: Fleiss keeps the 3 units rated three times.
    votes = _votes({"r1": ["a", "b", "a", "a"], "r2": ["a", "b", "a", "b"], "r3": ["a", "b", "b", None]})
    result = agreement(votes)
    assert result["fleiss"]["units"] == 3 and result["fleiss"]["ratings_per_unit"] == 3
    assert np.isfinite(result["krippendorff_alpha"])
    table = pd.DataFrame({"r1": [0.0, 0.0], "r2": [0.0, 0.0]})
    assert krippendorff_alpha(table) is None  # one category only: alpha undefined
    assert fleiss(pd.DataFrame({"r1": [0.0, np.nan]})) is None and cohen_pairs(table) == []
