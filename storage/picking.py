"""Which pool pair a rater sees next (docs/study.md#pair-design): the least-shown eligible pair per unit of weight.

The study's pairs never change once written, so the pool is cached per process; every pick still reads the rater's
exposures and the showings so far. Called by storage/votes.next_assignment inside the rater's transaction.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Assignment, Study, StudyPair

GOLD_KINDS = ("gold_broken", "gold_identical")


def config_weights(study: Study) -> dict[tuple[int, int], float]:
    """The study config's "sampling_weights": {"A-B": weight} over sorted variant ids (docs/study.md#pair-design)."""
    weights = {}
    for key, w in (study.config or {}).get("sampling_weights", {}).items():
        a, b = (int(x) for x in key.split("-"))
        weights[(min(a, b), max(a, b))] = float(w)
    return weights


@dataclass(frozen=True)
class _Pool:
    """A study's pickable pairs (all but repeats) as parallel tuples; they never change once written."""

    signature: tuple
    ids: tuple[int, ...]
    groups: tuple[tuple[int, int] | None, ...]  # sorted variant ids, None for gold pairs (weight 1)
    exposures: tuple[tuple[str, int], ...]      # (condition, seed)


_pools: dict[int, _Pool] = {}


def _pool(session: Session, study: Study) -> _Pool:
    """The study's pool, cached per process: every pick needs all of it, and reading it back each time was most of a
    rater's wait. The cache is checked against the study's random salt and its pairs' count and largest id, so a
    pair added or a study re-created under a reused id reads it again."""
    count, last = session.execute(select(func.count(), func.max(StudyPair.id)).where(
        StudyPair.study_id == study.id, StudyPair.kind != "repeat")).one()
    signature = (study.salt, count, last)
    cached = _pools.get(study.id)
    if cached is not None and cached.signature == signature:
        return cached
    rows = session.execute(select(StudyPair.id, StudyPair.kind, StudyPair.variant_a_id, StudyPair.variant_b_id,
                                  StudyPair.condition, StudyPair.seed)
                           .where(StudyPair.study_id == study.id, StudyPair.kind != "repeat")
                           .order_by(StudyPair.id)).all()
    pool = _Pool(signature, tuple(r[0] for r in rows),
                 tuple(None if r[1] in GOLD_KINDS else (min(r[2] or 0, r[3] or 0), max(r[2] or 0, r[3] or 0))
                       for r in rows),
                 tuple((r[4], r[5]) for r in rows))
    _pools[study.id] = pool
    return pool


def pick_pair(session: Session, study: Study, rater: str, weights: Mapping[tuple[int, int], float],
               rng: random.Random) -> tuple[int, float] | None:
    """(pair id, its weight): uniformly among the eligible pairs with the fewest showings per unit of weight, so with
    equal weights every pair is shown equally often and a pair of weight 3 three times as often."""
    pool = _pool(session, study)
    seen = set(session.execute(select(StudyPair.condition, StudyPair.seed).join(
        Assignment, Assignment.pair_id == StudyPair.id).where(Assignment.study_id == study.id,
                                                               Assignment.rater == rater)).all())
    shown = dict(session.execute(select(Assignment.pair_id, func.count()).where(Assignment.study_id == study.id)
                                 .group_by(Assignment.pair_id)).all())
    best, candidates = math.inf, []  # the pairs of least showings per weight, with their weights
    for pair_id, group, exposure in zip(pool.ids, pool.groups, pool.exposures, strict=True):
        w = 1.0 if group is None else float(weights.get(group, 1.0))
        if w <= 0 or exposure in seen:
            continue
        score = (shown.get(pair_id, 0) + 1) / w
        if score < best * (1 - 1e-9):
            best, candidates = score, [(pair_id, w)]
        elif score <= best * (1 + 1e-9):
            candidates.append((pair_id, w))
    return rng.choice(candidates) if candidates else None
