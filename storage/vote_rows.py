"""A study's votes read back for analysis: the rows core/study reads (its votes.py documents the columns) and the
count of answered showings the adaptive weights refresh on. Read-only; the rater's side is storage/votes.py."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Assignment, Vote


def votes_frame(*, session: Session, study_id: int, include_gold: bool = False,
                include_retracted: bool = False) -> list[dict[str, Any]]:
    """The study's votes as rows for core/study (its votes.py documents the columns); variant ids as strings."""
    # Plain rows of the columns _row reads, not ORM objects: the adaptive weights re-read every vote in the rating
    # server's background, and building objects was most of that cost.
    query = select(*_ROW_COLUMNS).where(Vote.study_id == study_id).order_by(Vote.voted_at, Vote.id)
    if not include_gold:
        query = query.where(Vote.is_gold.is_(False))
    if not include_retracted:
        query = query.where(Vote.retracted_at.is_(None))
    return [_row(v) for v in session.execute(query)]


_ROW_COLUMNS = (Vote.left_variant_id, Vote.right_variant_id, Vote.choice, Vote.criterion, Vote.condition, Vote.rater,
                Vote.client_ms_after_load, Vote.voted_at, Vote.served_at, Vote.is_gold, Vote.gold_expected,
                Vote.repeat_of, Vote.pair_id, Vote.seq_in_session, Vote.seed, Vote.retracted_at)


def _row(v) -> dict[str, Any]:
    if v.client_ms_after_load is not None:
        latency = float(v.client_ms_after_load)
    else:
        latency = (v.voted_at - v.served_at).total_seconds() * 1000.0
    return {"left": "" if v.left_variant_id is None else str(v.left_variant_id),
            "right": "" if v.right_variant_id is None else str(v.right_variant_id),
            "choice": v.choice, "criterion": v.criterion, "condition": v.condition, "rater": v.rater,
            "latency_ms": latency, "is_gold": bool(v.is_gold), "gold_expected": v.gold_expected,
            "repeat_of": None if v.repeat_of is None else str(v.repeat_of), "pair": str(v.pair_id),
            "voted_at": v.voted_at.timestamp(), "seq_in_session": int(v.seq_in_session), "seed": int(v.seed),
            "retracted": v.retracted_at is not None}


def answered_pairs(*, session: Session, study_id: int) -> int:
    """Showings answered in a study, all raters together (the adaptive weights refresh every so many)."""
    return session.scalar(select(func.count()).select_from(Assignment).where(
        Assignment.study_id == study_id, Assignment.completed_at.is_not(None))) or 0
