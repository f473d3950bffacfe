"""Inter-rater agreement on units (pair, criterion), categories = canonical outcomes (a, b, tie, both bad)
(docs/study.md#agreement): Cohen's kappa per rater pair with enough shared units (scikit-learn), Fleiss' kappa over the largest
set of units rated equally often (statsmodels), Krippendorff's alpha, nominal, with missing ratings (krippendorff).
Gold pairs and repeats are left out.
"""

from __future__ import annotations

from itertools import combinations

import krippendorff
import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from core.study.votes import canonical_outcomes, is_repeat

LABELS = ("a", "b", "tie", "both_bad")


def unit_table(votes: pd.DataFrame) -> pd.DataFrame:
    """Units (pair, criterion) x raters, cells = label code 0..3, NaN where the rater did not rate the unit."""
    canon = canonical_outcomes(votes[~votes["is_gold"] & ~is_repeat(votes)])
    canon = canon.assign(code=canon["label"].map({lab: k for k, lab in enumerate(LABELS)}).astype(float))
    return canon.pivot_table(index=["pair", "criterion"], columns="rater", values="code", aggfunc="first")


def cohen_pairs(table: pd.DataFrame, min_shared: int = 30) -> list[dict]:
    """Cohen's kappa for each rater pair sharing at least `min_shared` units."""
    rows = []
    for r1, r2 in combinations(table.columns, 2):
        both = table[[r1, r2]].dropna()
        if len(both) >= min_shared:
            kappa = cohen_kappa_score(both[r1], both[r2], labels=list(range(len(LABELS))))
            rows.append({"rater_a": r1, "rater_b": r2, "shared_units": len(both), "kappa": float(kappa)})
    return rows


def fleiss(table: pd.DataFrame) -> dict | None:
    """Fleiss' kappa over the largest group of units with the same number (>= 2) of ratings (ties: more ratings)."""
    per_unit = table.notna().sum(axis=1)
    sizes = per_unit[per_unit >= 2].value_counts()
    if sizes.empty:
        return None
    m = int(max(sizes.index, key=lambda k: (sizes[k], k)))
    units = table[per_unit == m]
    if len(units) < 2:
        return None
    ratings = np.array([row[~np.isnan(row)] for row in units.to_numpy()], dtype=int)
    counts, _ = aggregate_raters(ratings, n_cat=len(LABELS))
    return {"units": len(units), "ratings_per_unit": m, "kappa": float(fleiss_kappa(counts, method="fleiss"))}


def krippendorff_alpha(table: pd.DataFrame) -> float | None:
    """Nominal alpha over raters x units with NaN for missing; None when undefined (one category, no overlap)."""
    data = table.to_numpy().T
    if data.shape[0] < 2 or (np.isfinite(data).sum(0) >= 2).sum() == 0 or len(np.unique(data[np.isfinite(data)])) < 2:
        return None
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))


def agreement(votes: pd.DataFrame, min_shared: int = 30) -> dict:
    """Cohen pairs, Fleiss and Krippendorff for one criterion's (or several criteria's) votes."""
    table = unit_table(votes)
    return {"units": len(table), "units_with_overlap": int((table.notna().sum(axis=1) >= 2).sum()),
            "cohen": cohen_pairs(table, min_shared), "fleiss": fleiss(table), "krippendorff_alpha": krippendorff_alpha(table)}
