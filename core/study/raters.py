"""Per-rater diagnostics (docs/study.md#side-bias-latency-and-raters): votes, median latency, fast share, left rate
with its p-value, tie and both-bad rates, gold accuracy, repeat consistency and agreement with the leave-one-out
consensus.

A rater is flagged (reviewed, and dropped only in a labelled sensitivity fit) when gold accuracy < `min_gold` or the
left-rate p-value < `max_left_p`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.study.significance import binomial_summary
from core.study.votes import canonical_outcomes, is_repeat

LABELS = ("a", "b", "tie", "both_bad")


def gold_correct(votes: pd.DataFrame) -> pd.Series:
    """For gold votes: whether the choice is one of `gold_expected` (`|`-separated)."""
    gold = votes[votes["is_gold"]]
    return pd.Series([c in str(e).split("|") for c, e in zip(gold["choice"], gold["gold_expected"])], index=gold.index,
                     dtype=bool)


def repeat_consistency(votes: pd.DataFrame) -> pd.DataFrame:
    """One row per repeat whose original (same rater and criterion, `pair` == `repeat_of`) is present: whether the
    canonical outcomes (winner variant, tie or both bad, whatever the sides) agree."""
    canon = canonical_outcomes(votes)
    originals = canon[~is_repeat(votes)].drop_duplicates(["rater", "criterion", "pair"])
    repeats = canon[is_repeat(votes)].assign(pair=lambda x: x["repeat_of"].astype(str))
    merged = repeats.merge(originals, on=["rater", "criterion", "pair"], suffixes=("", "_first"))
    return pd.DataFrame({"rater": merged["rater"], "consistent": (merged["label"] == merged["label_first"]).to_numpy(bool)})


def consensus_agreement(votes: pd.DataFrame) -> pd.Series:
    """Per rater: the share of their units (pair, criterion) on which their label equals the modal label of the other
    raters; units without other raters or with a tied mode are skipped. Gold and repeats are left out."""
    canon = canonical_outcomes(votes[~votes["is_gold"] & ~is_repeat(votes)])
    unit = canon.groupby(["pair", "criterion"], sort=False).ngroup().to_numpy()
    label = pd.Categorical(canon["label"], categories=LABELS).codes
    counts = np.zeros((unit.max() + 1 if len(unit) else 0, len(LABELS)))
    np.add.at(counts, (unit, label), 1.0)
    others = counts[unit] - np.eye(len(LABELS))[label]  # the other raters' label counts, per vote
    top = others.max(1)
    usable = (top > 0) & ((others == top[:, None]).sum(1) == 1)
    hit = pd.Series(others.argmax(1) == label)[usable]
    return hit.groupby(canon["rater"].to_numpy()[usable]).mean().astype(float)


def rater_diagnostics(votes: pd.DataFrame, *, fast_ms: float = 1000.0, min_gold: float = 0.7,
                      max_left_p: float = 0.01) -> list[dict]:
    """One dict per rater (sorted by id); `flagged` lists the reasons (empty when none)."""
    gold_ok, consistency = gold_correct(votes), repeat_consistency(votes)
    consensus = consensus_agreement(votes)
    rows = []
    for rater, group in votes.groupby("rater", sort=True):
        latency = group["latency_ms"].dropna()
        left = binomial_summary(int((group["choice"] == "left").sum()), int(group["choice"].isin(("left", "right")).sum()))
        gold = gold_ok[gold_ok.index.isin(group.index)]
        repeats = consistency.loc[consistency["rater"] == rater, "consistent"]
        row = {"rater": rater, "votes": len(group),
               "median_latency_ms": float(latency.median()) if len(latency) else None,
               "fast_share": float((latency < fast_ms).mean()) if len(latency) else None,
               "left_rate": left["rate"], "left_p": left["p_value"],
               "tie_rate": float((group["choice"] == "tie").mean()),
               "both_bad_rate": float((group["choice"] == "both_bad").mean()),
               "gold_votes": len(gold), "gold_accuracy": float(gold.mean()) if len(gold) else None,
               "repeats": len(repeats), "repeat_consistency": float(repeats.mean()) if len(repeats) else None,
               "consensus_agreement": float(consensus[rater]) if rater in consensus.index else None}
        row["flagged"] = flag_reasons(row, min_gold=min_gold, max_left_p=max_left_p)
        rows.append(row)
    return rows


def flag_reasons(row: dict, *, min_gold: float = 0.7, max_left_p: float = 0.01) -> list[str]:
    """Why a rater's diagnostics call for review."""
    reasons = []
    if row["gold_accuracy"] is not None and row["gold_accuracy"] < min_gold:
        reasons.append(f"gold accuracy {row['gold_accuracy']:.2f} < {min_gold}")
    if row["left_p"] is not None and row["left_p"] < max_left_p:
        reasons.append(f"left rate {row['left_rate']:.2f}, p = {row['left_p']:.1e} < {max_left_p}")
    return reasons
