"""study_report end to end, exclusions, and the FastChat-shaped export."""

import io
import json

import numpy as np
import pandas as pd
import pytest

from core.study.report import fastchat_rows, study_report
from core.study.simulate import simulate_votes

TRUE = {"t": 0.0, "s1": -50.0, "s2": -120.0}


def _study() -> pd.DataFrame:
    quality = simulate_votes(TRUE, votes=1500, conditions=30, raters=8, kappa=5, tie_rate=0.2, seed=11,
                             left_bias={"r3": 0.6})
    alignment = simulate_votes(TRUE, votes=1500, conditions=30, raters=8, kappa=5, tie_rate=0.2, seed=12,
                               criterion="alignment")
    votes = pd.concat([quality, alignment], ignore_index=True)
    votes["seed"] = np.arange(len(votes)) % 7
    # Gold votes that s2 "wins" every time and repeats where s2 wins, s2 on either side: if either entered the fit,
    # s2 would move up.
    s2_left = np.arange(200) % 2 == 0
    wins = {"left": np.where(s2_left, "s2", "t"), "right": np.where(s2_left, "t", "s2"),
            "choice": np.where(s2_left, "left", "right")}
    gold = votes.iloc[:200].assign(**wins, is_gold=True, gold_expected=wins["choice"], pair=[f"g{k}" for k in range(200)])
    repeats = votes.iloc[200:400].assign(**wins, repeat_of=lambda x: x["pair"], pair=[f"rep{k}" for k in range(200)])
    return pd.concat([votes, gold, repeats], ignore_index=True)


def test_study_report_is_json_and_excludes_gold_and_repeats():
    votes = _study()
    report = study_report(votes, "t", n_boot=100, seed=3)
    text = json.dumps(report, allow_nan=False)  # JSON-serialisable, no NaN
    assert json.loads(text)["seed"] == 3
    assert report["exclusions"]["gold"] == 200 and report["exclusions"]["repeats"] == 200
    assert report["exclusions"]["flagged_raters"] == ["r3"]
    quality = report["criteria"]["quality"]
    assert set(quality) >= {"ratings", "sensitivity", "seat_term", "matrices", "pair_tests", "agreement", "votes_needed",
                            "sampling_weights", "latency", "tie_rate", "both_bad_rate", "unbounded"}
    assert set(quality["sensitivity"]) == {"no_ties", "no_fast_votes", "no_flagged_raters"}
    assert quality["votes"] + report["criteria"]["alignment"]["votes"] == 3000  # gold and repeats left out
    ratings = {r["variant"]: r for r in quality["ratings"]}
    clean = study_report(votes[~votes["is_gold"] & votes["repeat_of"].isna()], "t", n_boot=100, seed=3)
    assert ratings["s2"]["rating"] == pytest.approx({r["variant"]: r for r in clean["criteria"]["quality"]["ratings"]}
                                                    ["s2"]["rating"])
    assert ratings["t"]["rating"] == 1000.0 and ratings["t"]["status"] == "anchor"
    assert ratings["s2"]["lower"] < ratings["s2"]["rating"] < ratings["s2"]["upper"] < 1000
    assert ratings["s2"]["rank"] in (2, 3) and ratings["s2"]["status"] in ("provisional", "usable", "established")
    assert quality["votes_needed"]["tie_rate"] == pytest.approx(quality["tie_rate"] + quality["both_bad_rate"])
    assert quality["seat_term"]["lower"] > 0  # r3 clicks left 60 % of the time
    assert report["criteria"]["alignment"]["seat_term"]["lower"] < 0 < report["criteria"]["alignment"]["seat_term"]["upper"]
    no_flag = quality["sensitivity"]["no_flagged_raters"]
    assert no_flag["excluded_votes"] == int(((votes["rater"] == "r3") & (votes["criterion"] == "quality")
                                             & ~votes["is_gold"] & votes["repeat_of"].isna()).sum())


def test_disconnected_criterion_reports_the_error():
    votes = simulate_votes({"t": 0.0, "s": -10.0}, votes=200, seed=1)
    other = simulate_votes({"x": 0.0, "y": 0.0}, votes=50, seed=2, criterion="alignment")
    report = study_report(pd.concat([votes, other], ignore_index=True), "t", n_boot=20)
    assert "teacher 't' has no comparisons" in report["criteria"]["alignment"]["error"]
    assert "ratings" in report["criteria"]["quality"]


def test_fastchat_rows_load_in_pandas():
    votes = _study()
    rows = fastchat_rows(votes, salt="study-42")
    frame = pd.read_json(io.StringIO("\n".join(json.dumps(r) for r in rows)), lines=True)
    assert list(frame.columns) == ["model_a", "model_b", "winner", "judge", "tstamp", "question_id", "anony", "criterion",
                                   "condition_id", "seed", "latency_ms", "is_repeat"]
    assert len(frame) == len(votes) - 200  # gold only on request
    first = votes.iloc[0]
    assert (frame.loc[0, "model_a"], frame.loc[0, "model_b"]) == (first["left"], first["right"])
    assert set(frame["winner"]) == {"model_a", "model_b", "tie", "tie (bothbad)"}
    assert frame["anony"].all() and frame["is_repeat"].sum() == 200
    assert frame["judge"].nunique() == 8 and not frame["judge"].isin(votes["rater"]).any()
    assert frame["judge"].iloc[0] != fastchat_rows(votes.iloc[:1], salt="other")[0]["judge"]
    assert len(fastchat_rows(votes, salt="s", include_gold=True)) == len(votes)
    csv = pd.read_csv(io.StringIO(pd.DataFrame(rows).to_csv(index=False)))
    assert len(csv) == len(frame)


def test_study_statistics_load_no_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = "import core.study.report, sys; print('torch' in sys.modules, 'gradio' in sys.modules)"
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False False"
