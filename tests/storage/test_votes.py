"""The rater's side of a study on SQLite and PostgreSQL: the exposure rule, quotas, repeats, gold answers in displayed
sides, idempotent submission, the live-vote unique index, undo, progress and the analysis rows."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from storage.db import session_scope
from storage.models import Assignment, StudyPair, Vote
from storage.studies import add_pair, create_study, set_status, study_variants
from storage.vote_rows import votes_frame
from storage.votes import (
    REPEAT_GAP,
    RatingError,
    displayed_expected,
    next_assignment,
    progress,
    record_votes,
    retrying,
    showing,
    undo_last,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
ANSWERS = {"quality": "left", "alignment": "tie"}


def make_study(session, *, conditions=("0", "1", "2"), seeds=(1, 2, 3), students: int = 2, gold: int = 0,
               config: dict | None = None, image: Callable[[str, str], str] | None = None, name: str | None = None,
               variants: list[dict] | None = None, teacher: str = "digits") -> dict:
    """An open study: a teacher and `students` (or the given `variants`, teacher first), every student paired with the
    teacher on each condition x seed, plus `gold` broken-vs-clean gold pairs on reserved conditions.
    `image(variant label, condition)` makes a blind image path."""
    image = image or (lambda label, condition: f"blind/{uuid.uuid4().hex}.png")
    if variants is None:
        variants = [{"model": f"teacher:{teacher}", "steps": 40, "label": "teacher", "is_teacher": True}]
        variants += [{"model": f"run:{100 + i}", "steps": 1 + i, "label": f"student-{i}"} for i in range(students)]
    study = create_study(session=session, name=name or f"study-{uuid.uuid4().hex[:8]}", teacher=teacher,
                         config=config or {}, variants=variants)
    rows = study_variants(session=session, study_id=study.id)
    label = {v.id: v.label for v in rows}
    teacher, *others = [v.id for v in rows]
    pairs = []
    for condition in conditions:
        for seed in seeds:
            for student in others:
                pairs.append(add_pair(session=session, study_id=study.id, kind="normal", variant_a_id=teacher,
                                      variant_b_id=student, image_a=image(label[teacher], condition),
                                      image_b=image(label[student], condition),
                                      condition=condition, condition_text=f"the digit {condition}", seed=seed).id)
    golds = [add_pair(session=session, study_id=study.id, kind="gold_broken", variant_a_id=teacher, variant_b_id=None,
                      image_a=image(label[teacher], "7"), image_b=image("broken", "7"), condition=f"gold-{i}",
                      condition_text="the digit 7",
                      seed=10_000 + i, gold_expected={"quality": ["a"], "alignment": ["a", "tie"]}).id
             for i in range(gold)]
    set_status(session=session, study_id=study.id, status="open")
    return {"study": study.id, "teacher": teacher, "students": others, "pairs": pairs, "gold": golds}


def _study(db, **kw) -> dict:
    with session_scope(db) as s:
        return make_study(s, **kw)


def _next(db, ids, rater, **kw):
    kw.setdefault("repeat_rate", 0.0)
    with session_scope(db) as s:
        a = next_assignment(session=s, study_id=ids["study"], rater=rater, **kw)
        return None if a is None else (a.token, a.pair_id, a.a_on_left, a.seq)


def _vote(db, token, rater, answers=ANSWERS, **kw):
    with session_scope(db) as s:
        return [(v.criterion, v.choice) for v in record_votes(session=s, token=token, rater=rater, answers=answers, **kw)]


def _rate(db, ids, rater, n, **kw) -> list[tuple]:
    shown = []
    for _ in range(n):
        got = _next(db, ids, rater, **kw)
        if got is None:
            break
        _vote(db, got[0], rater)
        shown.append(got)
    return shown


def _conditions(db, pair_ids) -> list[tuple[str, int]]:
    with session_scope(db) as s:
        return [(p.condition, p.seed) for p in (s.get(StudyPair, i) for i in pair_ids)]


def test_a_reload_gets_the_same_open_assignment_and_tokens_are_opaque(db):
    ids = _study(db)
    first = _next(db, ids, "ann")
    assert _next(db, ids, "ann") == first
    assert len(first[0]) >= 30
    with session_scope(db) as s:
        a = s.scalar(select(Assignment).where(Assignment.token == first[0]))
        shown = showing(session=s, assignment=a)
        pair = s.get(StudyPair, a.pair_id)
    assert (shown.left_image, shown.right_image) == ((pair.image_a, pair.image_b) if a.a_on_left
                                                      else (pair.image_b, pair.image_a))
    assert shown.condition_text == pair.condition_text and shown.seq == 1
    assert _next(db, ids, "bob")[0] != first[0]


def test_exposure_rule_each_condition_and_seed_once_per_rater(db):
    ids = _study(db, conditions=("0", "1"), seeds=(1, 2), students=3)  # 4 (condition, seed) x 3 pairs each
    shown = _rate(db, ids, "ann", 20)
    seen = _conditions(db, [p for _, p, _, _ in shown])
    assert len(shown) == 4 and len(set(seen)) == 4  # then nothing is left for ann, though 8 pairs remain unseen
    assert _next(db, ids, "ann") is None
    with session_scope(db) as s:
        assert progress(session=s, study_id=ids["study"], rater="ann") == (4, 200)
    assert len(_rate(db, ids, "bob", 20)) == 4  # other raters are not limited by ann's showings


def test_balance_prefers_pairs_shown_least_and_sides_are_a_fair_coin(db):
    ids = _study(db, conditions=("0",), seeds=(1,), students=4)  # one (condition, seed): each rater sees one pair
    pairs = [_rate(db, ids, f"r{i}", 1, rng=random.Random(i))[0] for i in range(8)]
    with session_scope(db) as s:
        counts = dict(s.execute(select(Assignment.pair_id, func.count()).group_by(Assignment.pair_id)).all())
    assert sorted(counts.values()) == [2, 2, 2, 2]
    sides = [_next(db, _study(db, conditions=("0",), seeds=(1,), students=1), "x", rng=random.Random(k))[2]
             for k in range(40)]
    assert 10 < sum(sides) < 30
    assert len(pairs) == 8


def test_sampling_weights_steer_the_draw_and_are_stored(db):
    ids = _study(db, conditions=tuple(str(i) for i in range(10)), seeds=(1, 2), students=2)
    heavy = (min(ids["teacher"], ids["students"][0]), max(ids["teacher"], ids["students"][0]))
    shown = [_rate(db, ids, f"r{i}", 8, weights={heavy: 3.0}, rng=random.Random(i)) for i in range(6)]
    with session_scope(db) as s:
        rows = s.execute(select(Assignment.sampling_weight, StudyPair.variant_b_id)
                         .join(StudyPair, StudyPair.id == Assignment.pair_id)).all()
    assert {w for w, b in rows if b == ids["students"][0]} == {3.0} and {w for w, b in rows if b != ids["students"][0]} == {1.0}
    n_heavy = sum(b == ids["students"][0] for _, b in rows)
    assert len(rows) == 48 and 2 * (48 - n_heavy) < n_heavy  # about 3:1
    assert all(len(x) == 8 for x in shown)


def test_quota_stops_the_queue(db):
    ids = _study(db, config={"quota": 3})
    assert len(_rate(db, ids, "ann", 10)) == 3
    assert _next(db, ids, "ann") is None
    with session_scope(db) as s:
        assert progress(session=s, study_id=ids["study"], rater="ann") == (3, 3)
    assert _next(db, ids, "ann", quota=4) is not None  # an explicit quota wins over the config


def test_a_closed_study_serves_nothing(db):
    ids = _study(db)
    with session_scope(db) as s:
        set_status(session=s, study_id=ids["study"], status="closed")
    with pytest.raises(RatingError, match="not open"):
        _next(db, ids, "ann")


def test_swapped_repeat_after_the_gap(db):
    ids = _study(db, conditions=tuple(str(i) for i in range(6)), seeds=(1, 2, 3, 4, 5), students=1)
    shown = _rate(db, ids, "ann", REPEAT_GAP - 1)
    token, _, _, seq = _next(db, ids, "ann", repeat_rate=1.0)  # seq 20 is too early for a repeat of seq 1 ...
    assert seq == REPEAT_GAP
    with session_scope(db) as s:
        assert s.scalar(select(func.count()).select_from(StudyPair).where(StudyPair.kind == "repeat")) == 0
    _vote(db, token, "ann")
    token, pair_id, a_on_left, seq = _next(db, ids, "ann", repeat_rate=1.0)  # ... seq 21 repeats it
    with session_scope(db) as s:
        repeat = s.get(StudyPair, pair_id)
        original = s.get(StudyPair, repeat.repeat_of)
        copied = [(getattr(repeat, f), getattr(original, f)) for f in ("variant_a_id", "variant_b_id", "image_a",
                                                                          "image_b", "condition", "seed")]
    assert repeat.kind == "repeat" and original.id == shown[0][1] and seq == REPEAT_GAP + 1
    assert all(x == y for x, y in copied) and a_on_left == (not shown[0][2])  # sides swapped against the first showing
    votes = _vote(db, token, "ann", {"quality": "right", "alignment": "left"})
    assert votes == [("alignment", "left"), ("quality", "right")]
    with session_scope(db) as s:
        assert {v.repeat_of for v in s.scalars(select(Vote).where(Vote.pair_id == pair_id))} == {original.id}
        rows = [r for r in votes_frame(session=s, study_id=ids["study"]) if r["pair"] == str(pair_id)]
    assert {r["repeat_of"] for r in rows} == {str(original.id)}
    # seq 1 is repeated once only: the next repeat takes seq 2's pair
    got = _next(db, ids, "ann", repeat_rate=1.0)
    _vote(db, got[0], "ann")
    with session_scope(db) as s:
        assert s.get(StudyPair, got[1]).repeat_of == shown[1][1]
    # other raters never receive someone's repeat pair
    assert all(_conditions(db, [p]) and p not in (pair_id, got[1]) for _, p, _, _ in _rate(db, ids, "bob", 30))


def test_gold_answers_are_translated_to_displayed_sides(db):
    assert displayed_expected({"quality": ["a"]}, "quality", True) == "left"
    assert displayed_expected({"quality": ["a"]}, "quality", False) == "right"
    assert displayed_expected({"alignment": ["both_bad", "tie"]}, "alignment", False) == "tie|both_bad"
    assert displayed_expected({"alignment": ["b", "tie"]}, "alignment", True) == "right|tie"
    assert displayed_expected({"quality": ["a"]}, "alignment", True) is None
    ids = _study(db, conditions=(), seeds=(), gold=6)
    for rater in ("ann", "bob", "cy", "dee"):
        token, pair_id, a_on_left, _ = _next(db, ids, rater, rng=random.Random(rater))
        _vote(db, token, rater)
        with session_scope(db) as s:
            votes = {v.criterion: v for v in s.scalars(select(Vote).where(Vote.assignment_id == select(
                Assignment.id).where(Assignment.token == token).scalar_subquery()))}
            left, right = (ids["teacher"], None) if a_on_left else (None, ids["teacher"])
            assert votes["quality"].gold_expected == ("left" if a_on_left else "right") and votes["quality"].is_gold
            assert votes["alignment"].gold_expected == ("left|tie" if a_on_left else "right|tie")
            assert (votes["quality"].left_variant_id, votes["quality"].right_variant_id) == (left, right)
    with session_scope(db) as s:
        assert votes_frame(session=s, study_id=ids["study"]) == []
        rows = votes_frame(session=s, study_id=ids["study"], include_gold=True)
    assert len(rows) == 8 and all(r["is_gold"] and r["gold_expected"] for r in rows)


def test_the_vote_record_has_every_field(db):
    ids = _study(db)
    token, pair_id, a_on_left, seq = _next(db, ids, "ann", now=T0)
    _vote(db, token, "ann", {"quality": "right", "alignment": "both_bad"}, client_ms=1234.5, session_hash="abc",
          fullscreen=True, slider=False, app_version="0.1.0", now=T0 + timedelta(seconds=3))
    with session_scope(db) as s:
        votes = {v.criterion: v for v in s.scalars(select(Vote))}
        pair = s.get(StudyPair, pair_id)
        assignment = s.scalar(select(Assignment).where(Assignment.token == token))
    q = votes["quality"]
    left, right = (pair.variant_a_id, pair.variant_b_id) if a_on_left else (pair.variant_b_id, pair.variant_a_id)
    assert (q.choice, votes["alignment"].choice) == ("right", "both_bad")
    assert (q.study_id, q.pair_id, q.assignment_id, q.condition, q.seed) == (ids["study"], pair_id, assignment.id,
                                                                             pair.condition, pair.seed)
    assert (q.left_variant_id, q.right_variant_id, q.rater, q.session_hash) == (left, right, "ann", "abc")
    assert (q.served_at, q.voted_at, q.client_ms_after_load) == (T0, T0 + timedelta(seconds=3), 1234.5)
    assert (q.seq_in_session, q.fullscreen_used, q.slider_used, q.is_gold, q.gold_expected, q.repeat_of) == \
        (1, True, False, False, None, None)
    assert (q.sampling_weight, q.app_version, q.retracted_at) == (1.0, "0.1.0", None)
    assert assignment.completed_at == T0 + timedelta(seconds=3)
    # the sitting counts on, and restarts after a long pause
    token2 = _next(db, ids, "ann", now=T0 + timedelta(seconds=5))[0]
    _vote(db, token2, "ann", now=T0 + timedelta(seconds=9))
    token3 = _next(db, ids, "ann", now=T0 + timedelta(hours=2))[0]
    _vote(db, token3, "ann", now=T0 + timedelta(hours=2, seconds=4))
    with session_scope(db) as s:
        rows = votes_frame(session=s, study_id=ids["study"])
    assert [r["seq_in_session"] for r in rows] == [1, 1, 2, 2, 1, 1]
    assert rows[0]["latency_ms"] == 1234.5 and rows[2]["latency_ms"] == 4000.0
    assert rows[0]["voted_at"] == (T0 + timedelta(seconds=3)).timestamp()
    assert {k for k in rows[0]} >= {"left", "right", "choice", "criterion", "condition", "rater", "latency_ms", "is_gold",
                                    "gold_expected", "repeat_of", "pair", "voted_at", "seq_in_session", "seed"}
    assert {(r["left"], r["right"]) for r in rows[:2]} == {(str(left), str(right))}


def test_resubmission_is_idempotent_and_changes_are_refused(db):
    ids = _study(db)
    token = _next(db, ids, "ann")[0]
    first = _vote(db, token, "ann")
    assert _vote(db, token, "ann") == first  # a retry returns the stored votes
    with pytest.raises(RatingError, match="answered already"):
        _vote(db, token, "ann", {"quality": "right", "alignment": "tie"})
    with session_scope(db) as s:
        assert s.scalar(select(func.count()).select_from(Vote)) == 2


def test_another_raters_token_and_bad_answers_are_refused(db):
    ids = _study(db)
    token = _next(db, ids, "ann")[0]
    with pytest.raises(RatingError, match="not assigned to you"):
        _vote(db, token, "bob")
    with pytest.raises(RatingError, match="not assigned to you"):
        _vote(db, "no-such-token", "ann")
    with pytest.raises(RatingError, match="both questions"):
        _vote(db, token, "ann", {"quality": "left"})
    with pytest.raises(RatingError, match="choices"):
        _vote(db, token, "ann", {"quality": "left", "alignment": "A"})
    with session_scope(db) as s:
        assert s.scalar(select(func.count()).select_from(Vote)) == 0


def test_the_unique_index_refuses_a_second_live_vote(db):
    ids = _study(db)
    token = _next(db, ids, "ann")[0]
    _vote(db, token, "ann")
    with session_scope(db) as s:
        vote = s.scalar(select(Vote).where(Vote.criterion == "quality"))
        fields = {c.key: getattr(vote, c.key) for c in Vote.__table__.columns}
    with pytest.raises(IntegrityError), session_scope(db) as s:
        s.add(Vote(**{**fields, "id": str(uuid.uuid4()), "choice": "right"}))
    with session_scope(db) as s:  # a retracted vote steps aside
        s.add(Vote(**{**fields, "id": str(uuid.uuid4()), "choice": "right", "retracted_at": T0}))


def test_undo_inside_the_window_reopens_the_pair(db):
    ids = _study(db, config={"undo_s": 10})
    token, pair_id, _, _ = _next(db, ids, "ann", now=T0)
    _vote(db, token, "ann", now=T0 + timedelta(seconds=2))
    following = _next(db, ids, "ann", now=T0 + timedelta(seconds=2))[0]  # served right after Submit
    with session_scope(db) as s:
        undone = undo_last(session=s, rater="ann", study_id=ids["study"], now=T0 + timedelta(seconds=9))
        assert undone.token == token and undone.completed_at is None
        assert progress(session=s, study_id=ids["study"], rater="ann") == (0, 200)
    with session_scope(db) as s:
        assert all(v.retracted_at == T0 + timedelta(seconds=9) for v in s.scalars(select(Vote)))
        with pytest.raises(RatingError, match="answer the pair you undid"):
            undo_last(session=s, rater="ann", study_id=ids["study"], now=T0 + timedelta(seconds=9))
    assert _next(db, ids, "ann")[0] == token  # the undone pair is shown again, before the one served after it
    assert _vote(db, token, "ann", {"quality": "right", "alignment": "right"}) == [("alignment", "right"),
                                                                                   ("quality", "right")]
    assert _next(db, ids, "ann")[0] == following
    with session_scope(db) as s:
        live = s.scalars(select(Vote).where(Vote.retracted_at.is_(None))).all()
        assert len(live) == 2 and len(s.scalars(select(Vote)).all()) == 4  # nothing is deleted
        assert {r["choice"] for r in votes_frame(session=s, study_id=ids["study"])} == {"right"}
        assert len(votes_frame(session=s, study_id=ids["study"], include_retracted=True)) == 4


def test_undo_outside_the_window_or_with_nothing_to_undo_fails(db):
    ids = _study(db)
    with session_scope(db) as s, pytest.raises(RatingError, match="nothing to undo"):
        undo_last(session=s, rater="ann", study_id=ids["study"])
    token = _next(db, ids, "ann", now=T0)[0]
    _vote(db, token, "ann", now=T0 + timedelta(seconds=1))
    with session_scope(db) as s, pytest.raises(RatingError, match="too late"):
        undo_last(session=s, rater="ann", study_id=ids["study"], now=T0 + timedelta(seconds=12))
    with session_scope(db) as s:
        undo_last(session=s, rater="ann", study_id=ids["study"], window_s=20, now=T0 + timedelta(seconds=12))
    with session_scope(db) as s, pytest.raises(RatingError, match="nothing to undo"):
        undo_last(session=s, rater="bob", study_id=ids["study"])


def test_concurrent_requests_of_one_rater_share_one_open_assignment(db):
    import threading

    ids = _study(db, conditions=tuple(str(i) for i in range(10)), seeds=(1, 2, 3, 4, 5))
    tokens, errors = [], []

    def fetch():
        try:
            tokens.append(retrying(db, lambda s: next_assignment(session=s, study_id=ids["study"], rater="ann").token))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(tokens)) == 1
    votes = []

    def submit():
        votes.append(retrying(db, lambda s: len(record_votes(session=s, token=tokens[0], rater="ann", answers=ANSWERS))))

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert votes == [2] * 6
    with session_scope(db) as s:
        assert s.scalar(select(func.count()).select_from(Vote)) == 2


def test_a_pair_added_after_a_pick_is_picked_from_the_cached_pool(db):
    """The pool is cached per process (storage/votes._pool); a pair written later must still be served."""
    ids = _study(db, conditions=("0",), seeds=(1,), students=1)
    first = _next(db, ids, "ann")
    assert first is not None and first[1] == ids["pairs"][0]  # the pool is now cached
    _vote(db, first[0], "ann")
    assert _next(db, ids, "ann") is None  # ann has seen the only (condition, seed)
    with session_scope(db) as s:
        late = add_pair(session=s, study_id=ids["study"], kind="normal", variant_a_id=ids["teacher"],
                        variant_b_id=ids["students"][0], image_a="blind/late-a.png", image_b="blind/late-b.png",
                        condition="5", condition_text="the digit 5", seed=9).id
    again = _next(db, ids, "ann")
    assert again is not None and again[1] == late
