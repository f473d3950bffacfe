"""Studies, their variants and their pool of pairs (docs/study.md#pair-design): the researcher's side of a blind A/B study.

Showings and votes (the rater's side) live in storage/votes.py."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.artifacts import check_relative
from storage.models import STUDY_STATUSES, Study, StudyPair, StudyVariant, Vote


def create_study(*, session: Session, name: str, teacher: str, config: Mapping[str, Any],
                 variants: Iterable[Mapping[str, Any]], created_by: str = "") -> Study:
    """A draft study with its variants ({model, steps, checkpoint, label, is_teacher}); exactly one is the teacher."""
    variants = list(variants)
    if not name.strip():
        raise ValueError("name: give the study a name")
    if session.scalar(select(Study.id).where(Study.name == name.strip())) is not None:
        raise ValueError(f"name: a study called {name.strip()!r} exists already")
    if sum(bool(v.get("is_teacher")) for v in variants) != 1:
        raise ValueError("variants: exactly one variant must be the teacher (the ratings' anchor)")
    if len(variants) < 2:
        raise ValueError("variants: a study compares at least two variants")
    study = Study(name=name.strip(), teacher=teacher, config=dict(config), salt=secrets.token_hex(16),
                  created_by=created_by, status="draft")
    session.add(study)
    session.flush()
    for v in variants:
        session.add(StudyVariant(study_id=study.id, model=v["model"], steps=int(v["steps"]),
                                 checkpoint=int(v.get("checkpoint") or 0), label=v["label"],
                                 is_teacher=bool(v.get("is_teacher"))))
    session.flush()
    return study


def get_study(*, session: Session, study_id: int) -> Study | None:
    return session.get(Study, study_id, populate_existing=True)


def list_studies(*, session: Session) -> list[Study]:
    """Newest first."""
    return list(session.scalars(select(Study).order_by(Study.id.desc())))


def study_variants(*, session: Session, study_id: int) -> list[StudyVariant]:
    """Teacher first, then in creation order."""
    return list(session.scalars(select(StudyVariant).where(StudyVariant.study_id == study_id)
                                .order_by(StudyVariant.is_teacher.desc(), StudyVariant.id)))


def add_pair(*, session: Session, study_id: int, kind: str, variant_a_id: int | None, variant_b_id: int | None,
             image_a: str, image_b: str, condition: str, condition_text: str, seed: int,
             gold_expected: Mapping[str, list[str]] | None = None, repeat_of: int | None = None) -> StudyPair:
    """One pool pair; image paths are blind copies relative to the data dir. gold_expected maps a criterion to the
    correct answers in a/b terms ("a", "b", "tie", "both_bad")."""
    pair = StudyPair(study_id=study_id, kind=kind, variant_a_id=variant_a_id, variant_b_id=variant_b_id,
                     image_a=check_relative(image_a), image_b=check_relative(image_b), condition=str(condition),
                     condition_text=condition_text, seed=int(seed),
                     gold_expected=dict(gold_expected) if gold_expected else None, repeat_of=repeat_of)
    session.add(pair)
    session.flush()
    return pair


def pair_counts(*, session: Session, study_id: int) -> dict[str, int]:
    """Pool pairs by kind."""
    rows = session.execute(select(StudyPair.kind, func.count()).where(StudyPair.study_id == study_id)
                           .group_by(StudyPair.kind))
    return {kind: n for kind, n in rows}


def set_status(*, session: Session, study_id: int, status: str) -> None:
    if status not in STUDY_STATUSES:
        raise ValueError(f"status: must be one of {', '.join(STUDY_STATUSES)}, got {status!r}")
    study = session.get(Study, study_id)
    if study is None:
        raise ValueError(f"study: no study with id {study_id}")
    study.status = status
    session.flush()


def study_counts(*, session: Session, study_id: int) -> dict[str, int]:
    """Live (not retracted) votes and distinct raters of a study."""
    live = (Vote.study_id == study_id, Vote.retracted_at.is_(None))
    votes = session.scalar(select(func.count()).select_from(Vote).where(*live))
    raters = session.scalar(select(func.count(func.distinct(Vote.rater))).where(*live))
    return {"votes": int(votes or 0), "raters": int(raters or 0)}
