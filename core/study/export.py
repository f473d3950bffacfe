"""Votes as FastChat clean-battle rows (lm-sys/FastChat:fastchat/serve/monitor/clean_battle_data.py; docs/study.md#export),
so FastChat-style and evalica analyses run unchanged: model_a is the left variant, model_b the right one."""

from __future__ import annotations

import hashlib

import pandas as pd

from core.study.votes import is_repeat, validate_votes

WINNERS = {"left": "model_a", "right": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}


def judge_pseudonym(rater: str, salt: str) -> str:
    """Per-study pseudonym of a rater: sha256 of salt and rater id."""
    return hashlib.sha256(f"{salt}\x00{rater}".encode()).hexdigest()


def fastchat_rows(votes: pd.DataFrame, salt: str, *, include_gold: bool = False) -> list[dict]:
    """One dict per vote (gold only on request): model_a, model_b, winner, judge, tstamp, question_id, anony, and
    criterion, condition_id, prompt and seed (when those columns exist), latency_ms (None when unknown), is_repeat."""
    validate_votes(votes)
    if not salt:
        raise ValueError("fastchat_rows: salt must be a non-empty string (it keeps rater ids out of the export)")
    kept = votes if include_gold else votes[~votes["is_gold"]]
    out = pd.DataFrame({"model_a": kept["left"].astype(str), "model_b": kept["right"].astype(str),
                        "winner": kept["choice"].map(WINNERS), "judge": [judge_pseudonym(str(r), salt) for r in kept["rater"]],
                        "tstamp": kept["voted_at"].astype(float), "question_id": kept["pair"].astype(str), "anony": True,
                        "criterion": kept["criterion"].astype(str), "condition_id": kept["condition"].astype(str)})
    if "prompt" in kept.columns:  # text-to-image studies: the prompt the raters judged the pair against
        out["prompt"] = kept["prompt"].astype(str)
    if "seed" in kept.columns:
        out["seed"] = pd.Series([None if pd.isna(s) else int(s) for s in kept["seed"]], index=kept.index, dtype=object)
    out["latency_ms"] = pd.Series([None if pd.isna(x) else float(x) for x in kept["latency_ms"]], index=kept.index, dtype=object)
    out["is_repeat"] = is_repeat(kept).to_numpy(bool)
    if include_gold:
        out["is_gold"] = kept["is_gold"].to_numpy(bool)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in out.to_dict("records")]
