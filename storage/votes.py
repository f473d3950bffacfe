"""The rater's side of a blind A/B study (docs/study.md#raters-and-vote-integrity): showings (assignments), votes,
undo and progress.

A rater holds at most one open assignment per study; `next_assignment` hands it back on a reload, so a reload shows the
same pair. Two requests of one rater never interleave: on PostgreSQL a transaction-scoped advisory lock per (study,
rater), on SQLite the database's single write lock taken before the reads. Votes are claimed with one conditional
UPDATE of the assignment, and the partial unique index `uq_votes_live` (one live vote per rater x pair x criterion) is
the last line of defence, so a retried or doubled submission never writes twice.

Functions take a keyword-only session and never commit (the caller's `session_scope()` does); `retrying()` runs one
in its own transaction and retries it when the database reports a lock conflict. Refusals a rater may read are
`RatingError`s whose messages name no model.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage.db import server_now, session_scope
from storage.models import CHOICES, CRITERIA, Assignment, Study, StudyPair, Vote
from storage.picking import GOLD_KINDS, config_weights, pick_pair

DEFAULT_QUOTA = 200        # pairs per rater per study (config "quota")
DEFAULT_UNDO_S = 10.0      # seconds after Submit in which Undo still works (config "undo_s")
DEFAULT_REPEAT_RATE = 0.05  # share of showings that are side-swapped repeats (config "repeat_rate")
REPEAT_GAP = 20            # a repeat returns at least this many showings after the original (docs/study.md#pair-design)
SITTING_GAP_S = 30 * 60    # a pause this long starts a new sitting (seq_in_session restarts at 1)

T = TypeVar("T")


class RatingError(ValueError):
    """A refusal shown to the rater: says what to do, never which model is which."""


@dataclass(frozen=True)
class RateSettings:
    quota: int
    undo_s: float
    repeat_rate: float


@dataclass(frozen=True)
class Showing:
    """All the browser may learn about an assignment: its token, the two blind images and the condition text."""

    token: str
    left_image: str   # relative to the data dir, under the blind directory
    right_image: str
    condition_text: str
    seq: int


def rate_settings(study: Study) -> RateSettings:
    """The study's rating knobs from its config, with the defaults above."""
    config = study.config or {}
    quota, undo_s, repeat_rate = (config.get("quota", DEFAULT_QUOTA), config.get("undo_s", DEFAULT_UNDO_S),
                                  config.get("repeat_rate", DEFAULT_REPEAT_RATE))
    if not (isinstance(quota, int) and quota >= 1):
        raise ValueError(f"quota: must be an integer >= 1, got {quota!r}")
    if not (isinstance(undo_s, int | float) and undo_s >= 0):
        raise ValueError(f"undo_s: must be >= 0 seconds, got {undo_s!r}")
    if not (isinstance(repeat_rate, int | float) and 0 <= repeat_rate <= 0.5):
        raise ValueError(f"repeat_rate: must be in [0, 0.5], got {repeat_rate!r}")
    return RateSettings(int(quota), float(undo_s), float(repeat_rate))


_sqlite_writers: dict[str, threading.RLock] = {}


def _in_process_writer(factory: sessionmaker[Session]):
    """SQLite: one lock per database file for this process's rating transactions, which all write.

    SQLite admits one writer at a time anyway, but a thread that finds the file locked sleeps in SQLite's busy handler
    (1 ms rising to 100 ms between tries), so under 20 raters the waits, not the work, made the latency tail. Queued
    on a lock, the next transaction starts the moment the previous one commits. Other processes (the worker) still
    meet the busy timeout. PostgreSQL needs none: its advisory locks are per rater."""
    bind = factory.kw.get("bind")
    if bind is None or bind.dialect.name != "sqlite":
        return contextlib.nullcontext()
    return _sqlite_writers.setdefault(str(bind.url), threading.RLock())


def retrying(factory: sessionmaker[Session], fn: Callable[[Session], T], *, attempts: int = 5) -> T:
    """fn(session) in its own transaction, retried with a short backoff on lock conflicts and deadlocks."""
    for attempt in range(attempts):
        try:
            with _in_process_writer(factory), session_scope(factory) as session:
                return fn(session)
        except OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.02 * 2 ** attempt * (1 + random.random()))
    raise AssertionError("unreachable")


# -- serving pairs -----------------------------------------------------------------------------------------

def open_studies(*, session: Session) -> list[str]:
    """Names of the studies open for rating, oldest first."""
    return list(session.scalars(select(Study.name).where(Study.status == "open").order_by(Study.id)))


def open_study(*, session: Session, name: str) -> Study | None:
    """The open study called `name`, if any."""
    return session.scalar(select(Study).where(Study.name == name, Study.status == "open"))


def next_assignment(*, session: Session, study_id: int, rater: str, quota: int | None = None,
                    repeat_rate: float | None = None, weights: Mapping[tuple[int, int], float] | None = None,
                    rng: random.Random | None = None, now: datetime | None = None) -> Assignment | None:
    """The rater's open assignment, else a new one; None once the quota is met or no pair is left for this rater.

    A new one is a side-swapped repeat at `repeat_rate`, else a pool pair whose (condition, seed) the rater has not
    seen (the exposure rule), among those shown least so far relative to their weight (`weights`: sorted variant-id
    pair -> weight; by default the study config's "sampling_weights", else 1; gold pairs weigh 1)."""
    study = _open_study(session, study_id)
    knobs = rate_settings(study)
    quota = knobs.quota if quota is None else quota
    repeat_rate = knobs.repeat_rate if repeat_rate is None else repeat_rate
    rng = rng or random.SystemRandom()
    _lock_rater(session, study_id, rater)
    if _done(session, study_id, rater) >= quota:
        return None
    current = _open_assignments(session, study_id, rater)
    if current:
        return current[0]
    now = _now(session, now)
    seq = (session.scalar(select(func.max(Assignment.seq)).where(Assignment.study_id == study_id,
                                                                Assignment.rater == rater)) or 0) + 1
    if rng.random() < repeat_rate:
        repeat = _new_repeat(session, study_id, rater, seq, now)
        if repeat is not None:
            return repeat
    weights = config_weights(study) if weights is None else weights
    picked = pick_pair(session, study, rater, weights, rng)
    if picked is None:
        return None
    pair_id, weight = picked
    return _assign(session, study_id, pair_id, rater, a_on_left=rng.random() < 0.5, weight=weight, seq=seq, now=now)


def showing(*, session: Session, assignment: Assignment) -> Showing:
    """What the rating page displays for an assignment: images in displayed order, nothing that names a model."""
    pair = session.get(StudyPair, assignment.pair_id)
    left, right = (pair.image_a, pair.image_b) if assignment.a_on_left else (pair.image_b, pair.image_a)
    return Showing(assignment.token, left, right, pair.condition_text, assignment.seq)


def _open_study(session: Session, study_id: int) -> Study:
    study = session.get(Study, study_id, populate_existing=True)
    if study is None:
        raise RatingError("no such study")
    if study.status != "open":
        raise RatingError("this study is not open for rating")
    return study


def _lock_rater(session: Session, study_id: int, rater: str) -> None:
    """Serialise this rater's transactions in this study until commit (other raters are not held up on PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        digest = hashlib.blake2b(f"rate:{study_id}:{rater}".encode(), digest_size=8).digest()
        session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest, "big", signed=True))))
    else:
        # SQLite has one writer at a time: a (no-op) write first takes that lock, so the reads below cannot go stale.
        session.execute(update(Study).where(Study.id == study_id).values(status=Study.status))


def _now(session: Session, now: datetime | None) -> datetime:
    """`now`, else the database's clock, read once per transaction: a Submit's vote and the next pair it serves
    share one instant (on PostgreSQL each reading is a round trip inside a rater's wait)."""
    if now is not None and now.tzinfo is None:
        raise ValueError(f"now: {now.isoformat()} is naive; pass an aware UTC time")
    if now is not None:
        return now
    transaction = session.get_transaction()
    cached = session.info.get("rating_now")
    if cached is None or cached[0] is not transaction or transaction is None:
        cached = session.info["rating_now"] = (transaction, server_now(session))
    return cached[1]


def _done(session: Session, study_id: int, rater: str) -> int:
    return session.scalar(select(func.count()).select_from(Assignment).where(
        Assignment.study_id == study_id, Assignment.rater == rater, Assignment.completed_at.is_not(None))) or 0


def _open_assignments(session: Session, study_id: int, rater: str) -> list[Assignment]:
    """Oldest first: after an undo the reopened pair comes before the one served after it."""
    return list(session.scalars(select(Assignment).where(
        Assignment.study_id == study_id, Assignment.rater == rater, Assignment.completed_at.is_(None))
        .order_by(Assignment.seq).execution_options(populate_existing=True)))


def _new_repeat(session: Session, study_id: int, rater: str, seq: int, now: datetime) -> Assignment | None:
    """A copy of a normal pair this rater answered >= REPEAT_GAP showings ago, sides swapped against that showing."""
    repeated = select(StudyPair.repeat_of).join(Assignment, Assignment.pair_id == StudyPair.id).where(
        Assignment.study_id == study_id, Assignment.rater == rater, StudyPair.kind == "repeat")
    original = session.scalar(
        select(Assignment).join(StudyPair, StudyPair.id == Assignment.pair_id).where(
            Assignment.study_id == study_id, Assignment.rater == rater, Assignment.completed_at.is_not(None),
            Assignment.seq <= seq - REPEAT_GAP, StudyPair.kind == "normal", StudyPair.id.not_in(repeated))
        .order_by(Assignment.seq).limit(1))
    if original is None:
        return None
    pair = session.get(StudyPair, original.pair_id)
    copy = StudyPair(study_id=study_id, kind="repeat", variant_a_id=pair.variant_a_id, variant_b_id=pair.variant_b_id,
                     image_a=pair.image_a, image_b=pair.image_b, condition=pair.condition,
                     condition_text=pair.condition_text, seed=pair.seed, gold_expected=None, repeat_of=pair.id)
    session.add(copy)
    session.flush()
    return _assign(session, study_id, copy.id, rater, a_on_left=not original.a_on_left,
                   weight=original.sampling_weight, seq=seq, now=now)


def _assign(session: Session, study_id: int, pair_id: int, rater: str, *, a_on_left: bool, weight: float, seq: int,
            now: datetime) -> Assignment:
    assignment = Assignment(token=secrets.token_urlsafe(24), study_id=study_id, pair_id=pair_id, rater=rater,
                            a_on_left=a_on_left, sampling_weight=weight, seq=seq, served_at=now, completed_at=None)
    session.add(assignment)
    session.flush()
    return assignment


# -- votes -------------------------------------------------------------------------------------------------

def record_votes(*, session: Session, token: str, rater: str, answers: Mapping[str, str], client_ms: float | None = None,
                 session_hash: str = "", fullscreen: bool = False, slider: bool = False, app_version: str = "",
                 now: datetime | None = None) -> list[Vote]:
    """One vote per criterion for the rater's open assignment `token`, which it completes.

    Submitting the same answers again is a no-op returning the stored votes; different answers to an answered pair,
    or someone else's token, are refused."""
    answers = _check_answers(answers)
    if client_ms is not None and not (math.isfinite(client_ms) and client_ms >= 0):
        raise RatingError(f"client_ms: must be a non-negative number of milliseconds, got {client_ms!r}")
    assignment = session.scalar(select(Assignment).where(Assignment.token == str(token))
                                .execution_options(populate_existing=True))
    if assignment is None or assignment.rater != rater:  # one message for both: a token's existence is not news
        raise RatingError("this pair is not assigned to you; reload the page")
    now = _now(session, now)
    claimed = session.execute(update(Assignment).where(Assignment.id == assignment.id,
                                                       Assignment.completed_at.is_(None)).values(completed_at=now),
                              execution_options={"synchronize_session": False}).rowcount
    if not claimed:
        return _same_answers(session, assignment, answers)
    pair = session.get(StudyPair, assignment.pair_id)
    votes = _votes(session, assignment, pair, answers, client_ms=client_ms, session_hash=session_hash,
                   fullscreen=fullscreen, slider=slider, app_version=app_version, now=now)
    try:
        with session.begin_nested():
            session.add_all(votes)
    except IntegrityError:  # a live vote of this rater on this pair exists already: the idempotent case, or a refusal
        return _same_answers(session, assignment, answers, by_pair=True)
    return votes


def _check_answers(answers: Mapping[str, str]) -> dict[str, str]:
    answers = dict(answers)
    if set(answers) != set(CRITERIA):
        raise RatingError(f"answer both questions ({', '.join(CRITERIA)})")
    bad = {c: v for c, v in answers.items() if v not in CHOICES}
    if bad:
        raise RatingError(f"choices are {', '.join(CHOICES)}; got {bad}")
    return answers


def _same_answers(session: Session, assignment: Assignment, answers: dict[str, str], by_pair: bool = False) -> list[Vote]:
    where = ((Vote.rater == assignment.rater, Vote.pair_id == assignment.pair_id) if by_pair
             else (Vote.assignment_id == assignment.id,))
    votes = list(session.scalars(select(Vote).where(*where, Vote.retracted_at.is_(None)).order_by(Vote.criterion)
                                 .execution_options(populate_existing=True)))
    if votes and {v.criterion: v.choice for v in votes} == answers:
        return votes
    raise RatingError("this pair was answered already; undo it first to change the answers")


def _votes(session: Session, assignment: Assignment, pair: StudyPair, answers: dict[str, str], *,
           client_ms: float | None, session_hash: str, fullscreen: bool, slider: bool, app_version: str,
           now: datetime) -> list[Vote]:
    left, right = ((pair.variant_a_id, pair.variant_b_id) if assignment.a_on_left
                   else (pair.variant_b_id, pair.variant_a_id))
    is_gold = pair.kind in GOLD_KINDS
    seq_in_session = _seq_in_session(session, assignment.study_id, assignment.rater, now)
    return [Vote(id=str(uuid.uuid4()), study_id=assignment.study_id, pair_id=pair.id, assignment_id=assignment.id,
                 condition=pair.condition, seed=pair.seed, criterion=criterion, choice=choice,
                 left_variant_id=left, right_variant_id=right, rater=assignment.rater, session_hash=session_hash[:64],
                 served_at=assignment.served_at, voted_at=now, client_ms_after_load=client_ms,
                 seq_in_session=seq_in_session, fullscreen_used=bool(fullscreen), slider_used=bool(slider),
                 is_gold=is_gold, gold_expected=displayed_expected(pair.gold_expected, criterion, assignment.a_on_left)
                 if is_gold else None, repeat_of=pair.repeat_of, sampling_weight=assignment.sampling_weight,
                 app_version=app_version[:32], retracted_at=None)
            for criterion, choice in sorted(answers.items())]


def displayed_expected(expected: Mapping[str, list[str]] | None, criterion: str, a_on_left: bool) -> str | None:
    """A gold pair's correct answers in a/b terms, as displayed sides: e.g. ["a"] with a on the right -> "right"."""
    if not expected or criterion not in expected:
        return None
    sides = {"a": "left" if a_on_left else "right", "b": "right" if a_on_left else "left",
             "tie": "tie", "both_bad": "both_bad"}
    shown = {sides[x] for x in expected[criterion]}
    return "|".join(c for c in CHOICES if c in shown)


def _seq_in_session(session: Session, study_id: int, rater: str, now: datetime) -> int:
    """1 + the previous vote's position, unless the rater paused for SITTING_GAP_S (fatigue analysis)."""
    last = session.execute(select(Vote.voted_at, Vote.seq_in_session).where(
        Vote.study_id == study_id, Vote.rater == rater, Vote.retracted_at.is_(None))
        .order_by(Vote.voted_at.desc(), Vote.seq_in_session.desc()).limit(1)).first()
    if last is None or now - last.voted_at > timedelta(seconds=SITTING_GAP_S):
        return 1
    return last.seq_in_session + 1


# -- undo and progress -------------------------------------------------------------------------------------

def undo_last(*, session: Session, rater: str, study_id: int, window_s: float | None = None,
              now: datetime | None = None) -> Assignment:
    """Retract the votes of the rater's last answered pair within the undo window and reopen it (shown next)."""
    study = _open_study(session, study_id)
    window_s = rate_settings(study).undo_s if window_s is None else window_s
    _lock_rater(session, study_id, rater)
    now = _now(session, now)
    last = session.scalar(select(Assignment).where(
        Assignment.study_id == study_id, Assignment.rater == rater, Assignment.completed_at.is_not(None))
        .order_by(Assignment.completed_at.desc(), Assignment.seq.desc()).limit(1)
        .execution_options(populate_existing=True))
    reopened = select(Vote.id).join(Assignment, Assignment.id == Vote.assignment_id).where(
        Assignment.study_id == study_id, Assignment.rater == rater, Assignment.completed_at.is_(None),
        Vote.retracted_at.is_not(None)).limit(1)
    if session.scalar(reopened) is not None:  # one undo at a time
        raise RatingError("answer the pair you undid first")
    if last is None:
        raise RatingError("nothing to undo")
    if now - last.completed_at > timedelta(seconds=window_s):
        raise RatingError(f"too late to undo: undo works for {window_s:g} s after Submit")
    session.execute(update(Vote).where(Vote.assignment_id == last.id, Vote.retracted_at.is_(None))
                    .values(retracted_at=now), execution_options={"synchronize_session": False})
    session.execute(update(Assignment).where(Assignment.id == last.id).values(completed_at=None, served_at=now),
                    execution_options={"synchronize_session": False})
    session.refresh(last)
    return last


def progress(*, session: Session, study_id: int, rater: str) -> tuple[int, int]:
    """(pairs answered, quota) of the rater in the study."""
    study = session.get(Study, study_id)
    if study is None:
        raise RatingError("no such study")
    return _done(session, study_id, rater), rate_settings(study).quota
