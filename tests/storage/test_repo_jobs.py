"""The repository functions behind the job queue: take-over and release of a dead owner's run, re-sending lost
messages, metrics on resume, and generated images. Every test runs on SQLite and on PostgreSQL (see conftest.py)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from storage.db import session_scope
from storage.models import Image, Metric
from storage.repo import (
    claim_run,
    create_run,
    finish_run,
    get_run,
    heartbeat,
    latest_metrics,
    mark_dispatched,
    record_image,
    record_metrics,
    release_run,
    request_cancel,
    take_over,
    take_undispatched,
    truncate_metrics,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DEAD, OTHER, NEW = "host-a:101", "host-a:102", "host-a:103"


def _queued(db, kind: str = "distill") -> int:
    with session_scope(db) as s:
        return create_run(session=s, kind=kind, spec={"method": "mmd"}).id


def _running(db, worker: str = DEAD, lease_s: float = 60, now: datetime = T0) -> int:
    run_id = _queued(db)
    with session_scope(db) as s:
        assert claim_run(session=s, run_id=run_id, worker=worker, lease_s=lease_s, now=now)
    return run_id


def _state(db, run_id: int) -> tuple:
    with session_scope(db) as s:
        run = get_run(session=s, run_id=run_id)
        return (run.status, run.lease_owner, run.lease_expires_at, run.attempts, run.cancel_requested, run.finished_at)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- take_over -----------------------------------------------------------------------------------------------

def test_take_over_from_the_named_dead_owner_without_waiting_for_its_lease(db):
    run_id = _running(db, worker=DEAD, lease_s=600)
    with session_scope(db) as s:
        assert not take_over(session=s, run_id=run_id, dead_owner=OTHER, worker=NEW, lease_s=30, now=_at(5))
    assert _state(db, run_id) == ("running", DEAD, _at(600), 1, False, None)
    with session_scope(db) as s:  # the lease has ~10 minutes left: a plain claim would be refused
        assert not claim_run(session=s, run_id=run_id, worker=NEW, lease_s=30, now=_at(5))
        assert take_over(session=s, run_id=run_id, dead_owner=DEAD, worker=NEW, lease_s=30, now=_at(5))
    with session_scope(db) as s:
        run = get_run(session=s, run_id=run_id)
        assert (run.status, run.lease_owner, run.attempts) == ("running", NEW, 2)
        assert (run.lease_expires_at, run.heartbeat_at, run.started_at) == (_at(35), _at(5), _at(5))
        # the dead owner is locked out, and a second take-over from it (a racing reaper) loses
        assert not heartbeat(session=s, run_id=run_id, worker=DEAD, lease_s=30, step=3, now=_at(6))
        assert not take_over(session=s, run_id=run_id, dead_owner=DEAD, worker=OTHER, lease_s=30, now=_at(6))
    assert _state(db, run_id)[1:4] == (NEW, _at(35), 2)


def test_take_over_needs_a_running_run(db):
    queued = _queued(db)
    finished = _running(db)
    with session_scope(db) as s:
        assert finish_run(session=s, run_id=finished, worker=DEAD, status="failed", error="boom", now=_at(1))
    with session_scope(db) as s:
        assert not take_over(session=s, run_id=queued, dead_owner=DEAD, worker=NEW, lease_s=30, now=_at(2))
        assert not take_over(session=s, run_id=finished, dead_owner=DEAD, worker=NEW, lease_s=30, now=_at(2))
        assert not take_over(session=s, run_id=999, dead_owner=DEAD, worker=NEW, lease_s=30, now=_at(2))
    assert _state(db, queued) == ("queued", None, None, 0, False, None)
    assert _state(db, finished) == ("failed", None, None, 1, False, _at(1))


def test_take_over_refused_when_a_cancel_is_pending(db):
    run_id = _running(db, worker=DEAD)
    with session_scope(db) as s:
        assert request_cancel(session=s, run_id=run_id, now=_at(1))
    with session_scope(db) as s:
        assert not take_over(session=s, run_id=run_id, dead_owner=DEAD, worker=NEW, lease_s=30, now=_at(2))
    assert _state(db, run_id) == ("running", DEAD, _at(60), 1, True, None)


def test_take_over_checks_its_arguments(db):
    run_id = _running(db)
    with session_scope(db) as s:
        with pytest.raises(ValueError, match="^lease_s: must be > 0, got 0$"):
            take_over(session=s, run_id=run_id, dead_owner=DEAD, worker=NEW, lease_s=0, now=_at(1))
        with pytest.raises(ValueError, match="naive"):
            take_over(session=s, run_id=run_id, dead_owner=DEAD, worker=NEW, lease_s=5, now=datetime(2026, 1, 1))
    assert _state(db, run_id)[1] == DEAD


# -- release_run ---------------------------------------------------------------------------------------------

def test_release_requeues_the_dead_owners_run_only(db):
    run_id = _running(db, worker=DEAD)
    with session_scope(db) as s:
        assert not release_run(session=s, run_id=run_id, owner=OTHER, now=_at(1))
    assert _state(db, run_id) == ("running", DEAD, _at(60), 1, False, None)
    with session_scope(db) as s:
        assert release_run(session=s, run_id=run_id, owner=DEAD, now=_at(2))
    assert _state(db, run_id) == ("queued", None, None, 1, False, None)
    with session_scope(db) as s:
        assert not release_run(session=s, run_id=run_id, owner=DEAD, now=_at(3))  # already released
        assert not finish_run(session=s, run_id=run_id, worker=DEAD, status="succeeded", now=_at(3))
        assert claim_run(session=s, run_id=run_id, worker=NEW, lease_s=60, now=_at(4))
    assert _state(db, run_id)[:4] == ("running", NEW, _at(64), 2)


def test_release_ends_the_run_cancelled_when_a_cancel_is_pending(db):
    run_id = _running(db, worker=DEAD)
    with session_scope(db) as s:
        assert request_cancel(session=s, run_id=run_id, now=_at(1))
    with session_scope(db) as s:  # another owner's release changes nothing, not even the pending cancel
        assert not release_run(session=s, run_id=run_id, owner=OTHER, now=_at(2))
    assert _state(db, run_id) == ("running", DEAD, _at(60), 1, True, None)
    with session_scope(db) as s:  # False: there is nothing to re-send
        assert not release_run(session=s, run_id=run_id, owner=DEAD, now=_at(3))
    assert _state(db, run_id) == ("cancelled", None, None, 1, True, _at(3))
    with session_scope(db) as s:
        assert not claim_run(session=s, run_id=run_id, worker=NEW, lease_s=60, now=_at(4))


def test_release_leaves_queued_and_finished_runs_alone(db):
    queued, finished = _queued(db), _running(db)
    with session_scope(db) as s:
        finish_run(session=s, run_id=finished, worker=DEAD, status="succeeded", now=_at(1))
    with session_scope(db) as s:
        assert not release_run(session=s, run_id=queued, owner=DEAD, now=_at(2))
        assert not release_run(session=s, run_id=finished, owner=DEAD, now=_at(2))
    assert _state(db, queued) == ("queued", None, None, 0, False, None)
    assert _state(db, finished) == ("succeeded", None, None, 1, False, _at(1))


# -- mark_dispatched / take_undispatched ---------------------------------------------------------------------

def _dispatched(db, run_id: int) -> datetime | None:
    with session_scope(db) as s:
        return get_run(session=s, run_id=run_id).dispatched_at


def test_mark_dispatched_records_the_time(db):
    a, b = _queued(db), _queued(db)
    assert _dispatched(db, a) is None
    with session_scope(db) as s:
        mark_dispatched(session=s, run_id=a, now=T0)
    assert (_dispatched(db, a), _dispatched(db, b)) == (T0, None)
    before = datetime.now(UTC) - timedelta(minutes=5)  # the database's clock may differ a little from ours
    with session_scope(db) as s:
        mark_dispatched(session=s, run_id=b)
    assert before < _dispatched(db, b) < datetime.now(UTC) + timedelta(minutes=5)


def test_take_undispatched_resends_old_queued_messages_once(db):
    old, recent = _queued(db), _queued(db)
    running, finished, cancelled = _running(db), _running(db, worker=OTHER), _queued(db)
    with session_scope(db) as s:
        finish_run(session=s, run_id=finished, worker=OTHER, status="succeeded", now=T0)
        request_cancel(session=s, run_id=cancelled, now=T0)
        for run_id in (old, running, finished, cancelled):
            mark_dispatched(session=s, run_id=run_id, now=T0)
        mark_dispatched(session=s, run_id=recent, now=_at(20))
    with session_scope(db) as s:
        assert take_undispatched(session=s, older_than_s=30, now=_at(40)) == [old]
    assert (_dispatched(db, old), _dispatched(db, recent), _dispatched(db, running)) == (_at(40), _at(20), T0)
    with session_scope(db) as s:  # a second reaper at the same moment finds nothing left to send
        assert take_undispatched(session=s, older_than_s=30, now=_at(40)) == []
    with session_scope(db) as s:  # both grace periods over: old (re-sent at 40) and recent (sent at 20)
        assert take_undispatched(session=s, older_than_s=30, now=_at(71)) == [old, recent]
    with session_scope(db) as s:
        assert take_undispatched(session=s, older_than_s=30, now=_at(71)) == []
    assert [_state(db, r)[0] for r in (old, recent, running, finished, cancelled)] == \
        ["queued", "queued", "running", "succeeded", "cancelled"]


def test_take_undispatched_uses_created_at_for_a_run_never_sent(db):
    run_id = _queued(db)
    with session_scope(db) as s:
        created = get_run(session=s, run_id=run_id).created_at
    assert _dispatched(db, run_id) is None
    with session_scope(db) as s:
        assert take_undispatched(session=s, older_than_s=30, now=created + timedelta(seconds=10)) == []
    assert _dispatched(db, run_id) is None
    late = created + timedelta(seconds=31)
    with session_scope(db) as s:
        assert take_undispatched(session=s, older_than_s=30, now=late) == [run_id]
    assert _dispatched(db, run_id) == late
    with session_scope(db) as s:
        assert take_undispatched(session=s, older_than_s=30, now=late) == []


def test_take_undispatched_on_the_database_clock(db):
    stale, fresh = _queued(db), _queued(db)
    with session_scope(db) as s:
        mark_dispatched(session=s, run_id=stale, now=datetime.now(UTC) - timedelta(hours=1))
        mark_dispatched(session=s, run_id=fresh)
    with session_scope(db) as s:
        assert take_undispatched(session=s, older_than_s=300) == [stale]
    with session_scope(db) as s:
        assert take_undispatched(session=s, older_than_s=300) == []
    assert _dispatched(db, stale) > datetime.now(UTC) - timedelta(minutes=5)


# -- metrics -------------------------------------------------------------------------------------------------

def _metric_rows(db, run_id: int) -> list[tuple]:
    with session_scope(db) as s:
        rows = s.execute(select(Metric.step, Metric.key, Metric.value).where(Metric.run_id == run_id)
                         .order_by(Metric.step, Metric.key))
        return [tuple(r) for r in rows]


def test_truncate_metrics_drops_only_later_steps_of_that_run(db):
    a, b = _running(db), _running(db, worker=OTHER)
    with session_scope(db) as s:
        for step in (10, 20, 30, 40):
            record_metrics(session=s, run_id=a, step=step, values={"loss": step / 10, "lr": 1e-4})
            record_metrics(session=s, run_id=b, step=step, values={"loss": -step})
    with session_scope(db) as s:
        assert truncate_metrics(session=s, run_id=a, after_step=20) == 4  # steps 30 and 40, two keys each
    assert _metric_rows(db, a) == [(10, "loss", 1.0), (10, "lr", 1e-4), (20, "loss", 2.0), (20, "lr", 1e-4)]
    assert [step for step, _, _ in _metric_rows(db, b)] == [10, 20, 30, 40]
    with session_scope(db) as s:
        assert truncate_metrics(session=s, run_id=a, after_step=20) == 0
        assert truncate_metrics(session=s, run_id=a, after_step=0) == 4
    assert _metric_rows(db, a) == [] and len(_metric_rows(db, b)) == 4


def test_latest_metrics_gives_the_value_at_each_keys_last_step(db):
    a, b = _running(db), _running(db, worker=OTHER)
    with session_scope(db) as s:
        assert latest_metrics(session=s, run_id=a) == {}
        record_metrics(session=s, run_id=a, step=30, values={"loss/fake": 3.0})
        record_metrics(session=s, run_id=a, step=10, values={"loss/student": 1.0, "loss/fake": 1.5, "grad": math.nan})
        record_metrics(session=s, run_id=a, step=20, values={"loss/student": 0.5})  # logged after step 30: the step wins
        record_metrics(session=s, run_id=a, step=20, values={"loss/student": 0.25})  # the same step again: the later row
        record_metrics(session=s, run_id=b, step=99, values={"loss/student": 9.0, "other": 1.0})
    with session_scope(db) as s:
        assert latest_metrics(session=s, run_id=a) == {"loss/student": 0.25, "loss/fake": 3.0, "grad": None}
        assert latest_metrics(session=s, run_id=b) == {"loss/student": 9.0, "other": 1.0}
        assert latest_metrics(session=s, run_id=999) == {}


def test_latest_metrics_after_a_resume(db):
    run_id = _running(db)
    with session_scope(db) as s:
        for step in (10, 20, 30):
            record_metrics(session=s, run_id=run_id, step=step, values={"loss": float(step)})
    with session_scope(db) as s:  # resumed from the checkpoint at step 20: step 30 is logged again
        truncate_metrics(session=s, run_id=run_id, after_step=20)
        assert latest_metrics(session=s, run_id=run_id) == {"loss": 20.0}
        record_metrics(session=s, run_id=run_id, step=30, values={"loss": 29.0})
    with session_scope(db) as s:
        assert latest_metrics(session=s, run_id=run_id) == {"loss": 29.0}


# -- images --------------------------------------------------------------------------------------------------

def _images(db) -> list[tuple]:
    with session_scope(db) as s:
        rows = s.execute(select(Image.model, Image.seed, Image.class_id, Image.prompt, Image.steps, Image.path,
                                Image.run_id).order_by(Image.id))
        return [tuple(r) for r in rows]


def test_record_image_is_idempotent_on_its_key(db):
    first, second = _queued(db, "sample"), _queued(db, "sample")
    with session_scope(db) as s:
        image = record_image(session=s, model="teacher:digits", seed=17, class_id=3, steps=4, path="runs/1/a.png",
                             run_id=first)
        image_id = image.id
    with session_scope(db) as s:  # the same sample drawn again by another run: one row, its path moves
        again = record_image(session=s, model="teacher:digits", seed=17, class_id=3, steps=4, path="runs/2/a.png",
                             run_id=second)
        assert again.id == image_id
    assert _images(db) == [("teacher:digits", 17, 3, "", 4, "runs/2/a.png", second)]
    with session_scope(db) as s:  # anything in the key that differs is another sample
        for kw in ({"seed": 18}, {"class_id": None}, {"class_id": 0}, {"steps": 8}, {"prompt": "a red square"},
                   {"model": "run:1"}):
            record_image(session=s, **{"model": "teacher:digits", "seed": 17, "class_id": 3, "steps": 4,
                                       "path": "runs/2/b.png", **kw})
        record_image(session=s, model="teacher:digits", seed=17, class_id=None, steps=4, path="runs/2/c.png")
    rows = _images(db)
    assert len(rows) == 7
    assert [r[2] for r in rows] == [3, 3, -1, 0, 3, 3, 3]  # unconditional is stored as class -1
    assert rows[2] == ("teacher:digits", 17, -1, "", 4, "runs/2/c.png", None)  # recorded twice, one row


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.png"])
def test_record_image_rejects_a_path_outside_the_data_dir(db, path):
    with session_scope(db) as s:
        record_image(session=s, model="teacher:digits", seed=1, class_id=None, steps=4, path="images/old.png")
    with session_scope(db) as s:
        for seed in (1, 2):  # an existing key and a new one
            with pytest.raises(ValueError, match="must be relative"):
                record_image(session=s, model="teacher:digits", seed=seed, class_id=None, steps=4, path=path)
        # the session stays usable: the refused call left nothing half-made behind
        record_image(session=s, model="teacher:digits", seed=3, class_id=None, steps=4, path="images/3.png")
    assert [(r[1], r[5]) for r in _images(db)] == [(1, "images/old.png"), (3, "images/3.png")]
    with session_scope(db) as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 2
