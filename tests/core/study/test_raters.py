"""Per-rater diagnostics: gold accuracy, repeat consistency, leave-one-out consensus, fast share, flags."""

import numpy as np
import pandas as pd

from core.study.raters import rater_diagnostics


def _vote(rater, pair, left, right, choice, **extra):
    row = {"left": left, "right": right, "choice": choice, "criterion": "quality", "condition": "c0", "rater": rater,
           "latency_ms": 3000.0, "is_gold": False, "gold_expected": None, "repeat_of": None, "pair": pair,
           "voted_at": 0.0, "seq_in_session": 1}
    return {**row, **extra}


def test_gold_accuracy_repeats_consensus_and_flags():
    rows = [
        # gold: r1 gets 3 of 4 right (0.75); r2 gets 1 of 4 (0.25, flagged). "tie|both_bad" accepts either.
        *[_vote("r1", f"g{k}", "t", "t" if k == 3 else "x", c, is_gold=True, gold_expected=e)
          for k, (c, e) in enumerate([("left", "left"), ("right", "right"), ("left", "right"), ("both_bad", "tie|both_bad")])],
        *[_vote("r2", f"g{k}", "t", "x", c, is_gold=True, gold_expected="left")
          for k, c in enumerate(["left", "right", "tie", "right"])],
        # p1: t vs s. r1, r2, r3 pick t; r4 picks s. p2: r1 picks s, r2 and r3 pick t.
        _vote("r1", "p1", "t", "s", "left"), _vote("r2", "p1", "s", "t", "right"), _vote("r3", "p1", "t", "s", "left"),
        _vote("r4", "p1", "s", "t", "left"), _vote("r1", "p2", "t", "s", "right"), _vote("r2", "p2", "t", "s", "left"),
        _vote("r3", "p2", "s", "t", "right", latency_ms=400.0),
        # repeats of p1 with sides swapped: r1 consistent (t again), r2 flips to s.
        _vote("r1", "p1r", "s", "t", "right", repeat_of="p1"), _vote("r2", "p1r", "t", "s", "right", repeat_of="p1"),
    ]
    diag = {d["rater"]: d for d in rater_diagnostics(pd.DataFrame(rows), fast_ms=1000)}
    assert diag["r1"]["gold_accuracy"] == 0.75 and diag["r2"]["gold_accuracy"] == 0.25
    assert diag["r1"]["flagged"] == [] and diag["r2"]["flagged"][0].startswith("gold accuracy 0.25")
    assert diag["r1"]["repeat_consistency"] == 1.0 and diag["r2"]["repeat_consistency"] == 0.0
    assert diag["r3"]["repeats"] == 0 and diag["r3"]["repeat_consistency"] is None
    # Leave-one-out consensus: r1 agrees on p1 (others t,t,s: mode t) but not p2 (others t,t) -> 0.5;
    # r4 disagrees on p1 (others t,t,t) -> 0; r3: p1 mode t (t,t,s... others r1 t, r2 t, r4 s) agree, p2 tie in mode
    # (r1 s, r2 t) -> skipped -> 1.0.
    assert diag["r1"]["consensus_agreement"] == 0.5
    assert diag["r4"]["consensus_agreement"] == 0.0
    assert diag["r3"]["consensus_agreement"] == 1.0
    assert diag["r3"]["fast_share"] == 0.5 and diag["r3"]["median_latency_ms"] == 1700.0
    assert diag["r4"]["gold_accuracy"] is None and np.isclose(diag["r4"]["left_rate"], 1.0)


def test_left_rate_flag():
    rows = [_vote("r1", f"p{k}", "t", "s", "left") for k in range(20)]
    rows += [_vote("r2", f"p{k}", "t", "s", "left" if k % 2 else "right") for k in range(20)]
    diag = {d["rater"]: d for d in rater_diagnostics(pd.DataFrame(rows))}
    assert diag["r1"]["left_p"] < 1e-5 and "left rate 1.00" in diag["r1"]["flagged"][0]
    assert diag["r2"]["flagged"] == []
