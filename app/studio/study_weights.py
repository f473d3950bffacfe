"""Adaptive pair sampling (docs/study.md#pair-design): every ~50 answered pairs, re-weight the study's variant pairs toward the
widest rating-difference intervals, so new votes go where they narrow the results most.

The weights come from the quality criterion's condition-cluster bootstrap (core/study: capped at 3:1, never 0, pairs
with the teacher keep at least half) and are stored in the study config as {"A-B": weight} over variant ids, where
storage/votes.next_assignment reads them. Recomputing runs in a background thread, never in a rater's request."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from app.studio.study_export import votes_with_labels
from core.study.report import fit_with_intervals, pair_sampling
from core.study.votes import canonical_outcomes, fit_votes
from storage import studies
from storage.db import session_scope

REFRESH_EVERY = 50   # answered pairs between recomputations
ROUNDS = 200         # bootstrap rounds for the weights: their widths need not be publication grade
log = logging.getLogger("distill_studio.study")
_running: set[int] = set()
_lock = threading.Lock()


def compute_weights(factory: sessionmaker[Session], study_id: int, seed: int = 0) -> dict[str, float] | None:
    """{"A-B": weight} over variant ids, or None while the quality votes cannot be fitted yet (too few, disconnected,
    or not every teacher pair has its minimum of votes: then all weights stay 1)."""
    frame, teacher, _ = votes_with_labels(factory, study_id, include_gold=False)
    part = fit_votes(frame[frame["criterion"] == "quality"])[0] if not frame.empty else frame
    if part.empty:
        return None
    canon = canonical_outcomes(part)
    try:
        _, boot, _ = fit_with_intervals(canon, teacher, n_boot=ROUNDS, seed=seed)
    except ValueError:
        return None
    rows = pair_sampling(canon, boot, teacher)
    if not rows or "error" in rows[0]:
        return None
    with session_scope(factory) as session:
        ids = {v.label: v.id for v in studies.study_variants(session=session, study_id=study_id)}
    return {f"{min(ids[r['a']], ids[r['b']])}-{max(ids[r['a']], ids[r['b']])}": r["weight"] for r in rows}


def store_weights(factory: sessionmaker[Session], study_id: int, weights: dict[str, float]) -> None:
    with session_scope(factory) as session:
        study = studies.get_study(session=session, study_id=study_id)
        study.config = {**study.config, "sampling_weights": weights}  # a new dict: JSON columns track assignment


def refresh(factory: sessionmaker[Session], study_id: int) -> dict[str, float] | None:
    weights = compute_weights(factory, study_id)
    if weights is not None:
        store_weights(factory, study_id, weights)
    return weights


def maybe_refresh(factory: sessionmaker[Session], study_id: int, answered: int) -> bool:
    """After the `answered`-th pair of a study: start a background refresh every REFRESH_EVERY pairs (one at a time
    per study). True when one was started."""
    if answered <= 0 or answered % REFRESH_EVERY:
        return False
    with _lock:
        if study_id in _running:
            return False
        _running.add(study_id)

    def work() -> None:
        try:
            refresh(factory, study_id)
        except Exception:  # weights are an optimisation: a failed refresh leaves the previous ones in place
            log.exception("study %s: sampling weights not refreshed", study_id)
        finally:
            with _lock:
                _running.discard(study_id)

    threading.Thread(target=work, name=f"weights-{study_id}", daemon=True).start()
    return True
