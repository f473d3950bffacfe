"""The study report (docs/study.md#statistics): per criterion, the primary anchored Bradley-Terry fit with condition- and
rater-cluster bootstrap intervals, sensitivity fits, ranks, matrices, per-pair tests, side bias, rater diagnostics,
agreement, the votes-needed tables and provisional status, with every exclusion listed. JSON-serialisable.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core.study.agreement import agreement
from core.study.bootstrap import bootstrap_ratings, ci_ranks, difference_interval
from core.study.bradley_terry import fit_bt
from core.study.export import fastchat_rows  # noqa: F401  (part of this module's API)
from core.study.matrices import pair_counts, win_matrices
from core.study.planning import rating_status, sampling_weights, votes_needed_table
from core.study.raters import rater_diagnostics
from core.study.significance import pair_tests, seat_outcomes, side_bias
from core.study.votes import CRITERIA, canonical_outcomes, fit_votes, validate_votes

SEQ_BINS = (0, 10, 25, 50, 100, math.inf)  # seq_in_session bins for the fatigue table


def study_report(votes: pd.DataFrame, teacher: str, *, n_boot: int = 1000, seed: int = 0, fast_ms: float = 1000.0) -> dict:
    """Everything the Study tab shows, per criterion; see the module docstring."""
    validate_votes(votes)
    raters = rater_diagnostics(votes, fast_ms=fast_ms)
    flagged = [r["rater"] for r in raters if r["flagged"]]
    used, exclusions = fit_votes(votes)
    non_gold = votes[~votes["is_gold"]]
    report = {"teacher": teacher, "n_boot": n_boot, "seed": seed, "fast_ms": fast_ms, "n_votes": len(votes),
              "exclusions": {**exclusions, "flagged_raters": flagged}, "raters": raters,
              "side_bias": {"overall": side_bias(non_gold), "per_criterion": side_bias(non_gold, "criterion"),
                            "per_rater": side_bias(non_gold, "rater")},
              "criteria": {}}
    for criterion in CRITERIA:
        part = used[used["criterion"] == criterion]
        if len(part) == 0:
            report["criteria"][criterion] = {"error": "no votes"}
            continue
        try:
            report["criteria"][criterion] = criterion_report(part, teacher, n_boot=n_boot, seed=seed, fast_ms=fast_ms,
                                                             flagged=flagged)
        except ValueError as err:
            report["criteria"][criterion] = {"error": str(err), "votes": len(part)}
    return _json(report)


def criterion_report(part: pd.DataFrame, teacher: str, *, n_boot: int, seed: int, fast_ms: float, flagged: list[str]) -> dict:
    """One criterion's fits, intervals, tables and plans (votes already filtered to fit votes of this criterion)."""
    # 1. Primary fit (ties as half-wins), condition-cluster and rater-cluster intervals, ranks.
    canon = canonical_outcomes(part)
    primary, by_condition, by_rater = fit_with_intervals(canon, teacher, n_boot=n_boot, seed=seed)
    variants = list(primary.variants)
    ranks = ci_ranks(by_condition.lower, by_condition.upper)
    ratings = [variant_row(canon, v, k, primary, by_condition, by_rater, ranks, teacher) for k, v in enumerate(variants)]

    # 2. Sensitivity fits, each next to the primary one.
    fast = part["latency_ms"].to_numpy(float) < fast_ms  # NaN latency is never fast
    sensitivity = {"no_ties": sensitivity_fit(canon[canon["score"] != 0.5], canon, teacher, n_boot, seed),
                   "no_fast_votes": sensitivity_fit(canon[~fast], canon, teacher, n_boot, seed),
                   "no_flagged_raters": sensitivity_fit(canon[~canon["rater"].isin(flagged)], canon, teacher, n_boot, seed)}

    # 3. Left-seat term with a condition-cluster interval.
    left, right, score, seat = seat_outcomes(part)
    seat_fit = fit_bt(left, right, score, teacher=teacher, seat=seat)
    seat_boot = bootstrap_ratings(left, right, score, part["condition"].to_numpy(), teacher=teacher, n_boot=n_boot,
                                  seed=seed, seat=seat)
    seat_lo, seat_hi = np.nanpercentile(seat_boot.seat_samples, [2.5, 97.5])

    # 4. Tables: matrices, tests, agreement, plans, sampling weights, latency.
    ties = float((canon["score"] == 0.5).mean())
    return {"votes": len(canon), "decisive": int((canon["score"] != 0.5).sum()),
            "tie_rate": float((part["choice"] == "tie").mean()), "both_bad_rate": float((part["choice"] == "both_bad").mean()),
            "variants": variants, "ratings": ratings,
            "unbounded": primary.unbounded, "sensitivity": sensitivity,
            "seat_term": {"points": seat_fit.seat, "lower": float(seat_lo), "upper": float(seat_hi)},
            "matrices": win_matrices(canon, variants, primary.ratings),
            "pair_tests": pair_tests(canon, by_condition.samples, variants),
            "agreement": agreement(part),
            "votes_needed": votes_needed_table(tie_rate=ties),
            "sampling_weights": pair_sampling(canon, by_condition, teacher),
            "latency": latency_summary(part, fast_ms)}


def fit_with_intervals(canon: pd.DataFrame, teacher: str, *, n_boot: int, seed: int):
    """Point fit plus condition- and rater-cluster bootstraps of canonical outcomes."""
    a, b, s = canon["a"].to_numpy(str), canon["b"].to_numpy(str), canon["score"].to_numpy(float)
    point = fit_bt(a, b, s, teacher=teacher)
    by_condition = bootstrap_ratings(a, b, s, canon["condition"].to_numpy(), teacher=teacher, n_boot=n_boot, seed=seed)
    by_rater = bootstrap_ratings(a, b, s, canon["rater"].to_numpy(), teacher=teacher, n_boot=n_boot, seed=seed,
                                 cluster_name="rater")
    return point, by_condition, by_rater


def variant_row(canon, variant, k, primary, by_condition, by_rater, ranks, teacher) -> dict:
    """One variant's rating, intervals, rank, vote counts and status."""
    mine = canon[(canon["a"] == variant) | (canon["b"] == variant)]
    decisive = int((mine["score"] != 0.5).sum())
    half = float(by_condition.upper[k] - by_condition.lower[k]) / 2
    return {"variant": variant, "rating": float(primary.ratings[k]), "lower": float(by_condition.lower[k]),
            "upper": float(by_condition.upper[k]), "rater_lower": float(by_rater.lower[k]),
            "rater_upper": float(by_rater.upper[k]), "rank": int(ranks[k]), "votes": len(mine), "decisive": decisive,
            "half_width": half, "status": "anchor" if variant == teacher else rating_status(half, decisive),
            "unbounded": primary.unbounded.get(variant)}


def sensitivity_fit(subset: pd.DataFrame, canon: pd.DataFrame, teacher: str, n_boot: int, seed: int) -> dict:
    """A labelled refit on a subset: ratings and condition-cluster intervals, or the reason it cannot be fitted."""
    out = {"votes": len(subset), "excluded_votes": len(canon) - len(subset)}
    try:
        point, boot, _ = fit_with_intervals(subset, teacher, n_boot=n_boot, seed=seed) if len(subset) else (None,) * 3
    except ValueError as err:
        return {**out, "error": str(err)}
    if point is None:
        return {**out, "error": "no votes left"}
    return {**out, "ratings": {v: {"rating": float(r), "lower": float(lo), "upper": float(hi)}
                               for v, r, lo, hi in zip(point.variants, point.ratings, boot.lower, boot.upper)},
            "unbounded": point.unbounded}


def pair_sampling(canon: pd.DataFrame, boot, teacher: str) -> list[dict]:
    """Adaptive assignment weights per compared pair, from the widths of their rating-difference intervals."""
    counts = pair_counts(canon)
    variants = list(boot.variants)
    widths = []
    for row in counts.itertuples():
        lo, hi = difference_interval(boot.samples, variants.index(row.a), variants.index(row.b))
        widths.append(hi - lo)
    try:
        weights = sampling_weights(list(zip(counts["a"], counts["b"])), widths, counts["n"], teacher=teacher)
    except ValueError as err:
        return [{"error": str(err)}]
    return [{"a": a, "b": b, "votes": int(n), "width": float(w), "weight": float(x)}
            for a, b, n, w, x in zip(counts["a"], counts["b"], counts["n"], widths, weights)]


def latency_summary(part: pd.DataFrame, fast_ms: float) -> dict:
    """Latency quantiles, fast share, and latency and tie rate by position in the session (fatigue)."""
    latency = part["latency_ms"].dropna()
    bins = pd.cut(part["seq_in_session"], SEQ_BINS, right=True)
    fatigue = [{"seq_from": int(interval.left) + 1, "seq_to": None if math.isinf(interval.right) else int(interval.right),
                "votes": len(group), "median_latency_ms": group["latency_ms"].median(),
                "tie_rate": float(group["choice"].isin(("tie", "both_bad")).mean())}
               for interval, group in part.groupby(bins, observed=True)]
    quantiles = latency.quantile([0.1, 0.5, 0.9]).tolist() if len(latency) else [None] * 3
    return {"known": len(latency), "p10_ms": quantiles[0], "median_ms": quantiles[1], "p90_ms": quantiles[2],
            "fast_share": float((latency < fast_ms).mean()) if len(latency) else None, "by_seq_in_session": fatigue}


def _json(value):
    """numpy scalars to Python, NaN and inf to None, tuples to lists, recursively."""
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
