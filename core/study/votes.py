"""The vote table the study statistics read, its validation, the exclusions and the canonical outcomes (docs/study.md#preparation).

One row per vote (rater x pair x criterion), retracted votes already removed by the caller:

| column | type | meaning |
|---|---|---|
| `left`, `right` | str | variant ids shown on each side (equal only for an "identical" gold pair) |
| `choice` | str | `left`, `right`, `tie` or `both_bad`, as displayed |
| `criterion` | str | `quality` or `alignment` |
| `condition` | str | class/prompt cluster id (the bootstrap's primary cluster) |
| `rater` | str | rater id |
| `latency_ms` | float | ms from both images loaded to the click; NaN when unknown |
| `is_gold` | bool | a gold pair (never enters a fit) |
| `gold_expected` | str or None | the correct choice(s) of a gold pair, `|`-separated, e.g. `left` or `tie|both_bad` |
| `repeat_of` | str or None | set on a side-swapped repeat: the `pair` id of the original showing |
| `pair` | str | pair id (with `criterion`, the unit of agreement) |
| `voted_at` | float | Unix seconds |
| `seq_in_session` | int | position of the vote in the rater's sitting |

Optional: `seed` (exported when present). A vote's canonical outcome names the winning variant, or a tie, whatever the
side it sat on: `a` and `b` are the pair's variants in sorted order, `score` is 1 when `a` won, 0 when `b` won and 0.5
for `tie` and `both_bad` (half a win each, FastChat's rule); `label` is `a`, `b`, `tie` or `both_bad`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CHOICES = ("left", "right", "tie", "both_bad")
CRITERIA = ("quality", "alignment")
STRING_COLUMNS = ("left", "right", "choice", "criterion", "condition", "rater", "pair")
COLUMNS = STRING_COLUMNS + ("latency_ms", "is_gold", "gold_expected", "repeat_of", "voted_at", "seq_in_session")


def validate_votes(votes: pd.DataFrame) -> None:
    """Raise ValueError naming the column when `votes` does not follow the schema above."""
    missing = [c for c in COLUMNS if c not in votes.columns]
    if missing:
        raise ValueError(f"votes: missing column(s) {missing}")
    for col in STRING_COLUMNS:
        if votes[col].isna().any():
            raise ValueError(f"votes: column '{col}' has {int(votes[col].isna().sum())} missing value(s)")
    _check_values(votes, "choice", CHOICES)
    _check_values(votes, "criterion", CRITERIA)
    for col in ("latency_ms", "voted_at", "seq_in_session"):
        if not pd.api.types.is_numeric_dtype(votes[col]):
            raise ValueError(f"votes: column '{col}' must be numeric, got dtype {votes[col].dtype}")
    if not pd.api.types.is_bool_dtype(votes["is_gold"]):
        raise ValueError(f"votes: column 'is_gold' must be bool, got dtype {votes['is_gold'].dtype}")
    if votes["voted_at"].isna().any():
        raise ValueError("votes: column 'voted_at' has missing values")
    same = (votes["left"] == votes["right"]) & ~votes["is_gold"]
    if same.any():
        raise ValueError(f"votes: columns 'left' and 'right' name the same variant in {int(same.sum())} non-gold vote(s)")
    no_key = votes["is_gold"] & votes["gold_expected"].isna()
    if no_key.any():
        raise ValueError(f"votes: column 'gold_expected' is empty for {int(no_key.sum())} gold vote(s)")
    bad = {x for v in votes.loc[votes["is_gold"], "gold_expected"] for x in str(v).split("|")} - set(CHOICES)
    if bad:
        raise ValueError(f"votes: column 'gold_expected' holds {sorted(bad)}, outside {list(CHOICES)}")


def _check_values(votes: pd.DataFrame, col: str, allowed: tuple[str, ...]) -> None:
    bad = sorted(set(votes[col].unique()) - set(allowed))
    if bad:
        raise ValueError(f"votes: column '{col}' has values outside {list(allowed)}: {bad[:5]}")


def is_repeat(votes: pd.DataFrame) -> pd.Series:
    """True for a side-swapped repeat (its original's answer is the one that counts)."""
    return votes["repeat_of"].notna() & (votes["repeat_of"].astype(str) != "")


def fit_votes(votes: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The votes a rating fit may use (non-gold first answers) and the exclusions, counted."""
    gold, repeat = votes["is_gold"].to_numpy(bool), is_repeat(votes).to_numpy(bool)
    exclusions = {"gold": int(gold.sum()), "repeats": int((repeat & ~gold).sum()),
                  "retracted": "removed by the caller before analysis"}
    return votes[~gold & ~repeat], exclusions


def canonical_outcomes(votes: pd.DataFrame) -> pd.DataFrame:
    """A copy of `votes` with `a`, `b` (sorted variant ids), `winner` (a variant id or `tie`), `score` and `label`."""
    out = votes.copy()
    left, right, choice = out["left"].astype(str), out["right"].astype(str), out["choice"]
    swap = left > right
    out["a"], out["b"] = np.where(swap, right, left), np.where(swap, left, right)
    out["winner"] = np.select([choice == "left", choice == "right"], [left, right], "tie")
    a_won = (choice == "left") & ~swap | (choice == "right") & swap
    b_won = (choice == "right") & ~swap | (choice == "left") & swap
    out["score"] = np.select([a_won, b_won], [1.0, 0.0], 0.5)
    out["label"] = np.select([a_won, b_won, choice == "tie"], ["a", "b", "tie"], "both_bad")
    return out


def decisive(votes: pd.DataFrame) -> pd.Series:
    """True where the rater picked a side."""
    return votes["choice"].isin(("left", "right"))
