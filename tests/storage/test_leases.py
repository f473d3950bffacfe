"""Claims, leases, heartbeats and the reaper: the guarantees that make duplicate deliveries and dead workers harmless."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from storage.db import session_scope
from storage.repo import claim_run, create_run, finish_run, get_run, heartbeat, requeue_expired

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _queued(db) -> int:
    with session_scope(db) as s:
        return create_run(session=s, kind="distill", spec={"method": "mmd"}).id


def _claim(db, run_id: int, worker: str, now: datetime = T0, lease_s: float = 60) -> bool:
    with session_scope(db) as s:
        return claim_run(session=s, run_id=run_id, worker=worker, lease_s=lease_s, now=now)


def _race(db, run_id: int, workers: int, now: datetime | None) -> list[str]:
    """`workers` threads, each with its own connection, claim at the same instant; the winners' names."""
    barrier, winners, errors = threading.Barrier(workers), [], []

    def attempt(name: str) -> None:
        try:
            barrier.wait(timeout=10)
            with session_scope(db) as s:
                if claim_run(session=s, run_id=run_id, worker=name, lease_s=60, now=now):
                    winners.append(name)
        except Exception as exc:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(f"w{i}",)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    return winners


def test_eight_racing_workers_one_claim(db):
    run_id = _queued(db)
    winners = _race(db, run_id, workers=8, now=None)  # the database's own clock
    assert len(winners) == 1
    with session_scope(db) as s:
        run = get_run(session=s, run_id=run_id)
        assert (run.status, run.lease_owner, run.attempts) == ("running", winners[0], 1)
        assert run.started_at is not None and run.lease_expires_at > run.started_at


def test_racing_for_an_expired_lease_one_claim(db):
    run_id = _queued(db)
    assert _claim(db, run_id, "dead", lease_s=30)
    winners = _race(db, run_id, workers=8, now=T0 + timedelta(seconds=31))
    assert len(winners) == 1
    with session_scope(db) as s:
        assert get_run(session=s, run_id=run_id).attempts == 2


def test_a_live_lease_cannot_be_claimed(db):
    run_id = _queued(db)
    assert _claim(db, run_id, "a", lease_s=30)
    assert not _claim(db, run_id, "b", now=T0 + timedelta(seconds=29))
    assert not _claim(db, run_id, "a", now=T0 + timedelta(seconds=1))  # not even by its owner: a duplicate delivery
    assert not _claim(db, 999, "a")


def test_heartbeat_extends_the_lease_for_the_owner_only(db):
    run_id = _queued(db)
    assert _claim(db, run_id, "a", lease_s=30)
    with session_scope(db) as s:
        assert not heartbeat(session=s, run_id=run_id, worker="b", lease_s=30, step=5, now=T0 + timedelta(seconds=10))
        assert heartbeat(session=s, run_id=run_id, worker="a", lease_s=30, step=7, total=100, now=T0 + timedelta(seconds=20))
    with session_scope(db) as s:
        run = get_run(session=s, run_id=run_id)
        assert (run.step, run.total, run.heartbeat_at, run.lease_expires_at) == \
            (7, 100, T0 + timedelta(seconds=20), T0 + timedelta(seconds=50))
    assert not _claim(db, run_id, "b", now=T0 + timedelta(seconds=40))  # renewed: still alive
    with session_scope(db) as s:
        assert requeue_expired(session=s, now=T0 + timedelta(seconds=40)) == []


def test_expired_lease_is_requeued_and_the_old_owner_is_locked_out(db):
    a, b = _queued(db), _queued(db)
    assert _claim(db, a, "dead", lease_s=30) and _claim(db, b, "alive", lease_s=300)
    later = T0 + timedelta(seconds=31)
    with session_scope(db) as s:
        assert requeue_expired(session=s, now=later) == [a]
    with session_scope(db) as s:
        run = get_run(session=s, run_id=a)
        assert (run.status, run.lease_owner, run.lease_expires_at, run.attempts) == ("queued", None, None, 1)
        assert get_run(session=s, run_id=b).status == "running"
        assert requeue_expired(session=s, now=later) == []  # idempotent
    with session_scope(db) as s:
        assert not heartbeat(session=s, run_id=a, worker="dead", lease_s=30, step=9, now=later)
        assert not finish_run(session=s, run_id=a, worker="dead", status="succeeded", now=later)
    assert _claim(db, a, "new", now=later)
    with session_scope(db) as s:
        assert get_run(session=s, run_id=a).attempts == 2


def test_finish_by_the_owner_only_and_only_once(db):
    run_id = _queued(db)
    assert _claim(db, run_id, "a")
    with session_scope(db) as s:
        assert not finish_run(session=s, run_id=run_id, worker="b", status="succeeded", now=T0)
        assert finish_run(session=s, run_id=run_id, worker="a", status="failed", error="CUDA out of memory", now=T0)
        assert not finish_run(session=s, run_id=run_id, worker="a", status="succeeded", now=T0)
    with session_scope(db) as s:
        run = get_run(session=s, run_id=run_id)
        assert (run.status, run.error, run.finished_at, run.lease_owner) == ("failed", "CUDA out of memory", T0, None)
        assert not heartbeat(session=s, run_id=run_id, worker="a", lease_s=30, step=1, now=T0)


@pytest.mark.parametrize("status", ["running", "queued", "done", ""])
def test_finish_needs_a_terminal_status(db, status):
    run_id = _queued(db)
    with session_scope(db) as s, pytest.raises(ValueError, match=rf"^status: .*got '{status}'$"):
        finish_run(session=s, run_id=run_id, worker="a", status=status)


def test_lease_and_clock_arguments_are_checked(db):
    run_id = _queued(db)
    with session_scope(db) as s:
        with pytest.raises(ValueError, match="lease_s: must be > 0"):
            claim_run(session=s, run_id=run_id, worker="a", lease_s=0)
        with pytest.raises(ValueError, match="naive"):
            claim_run(session=s, run_id=run_id, worker="a", lease_s=5, now=datetime(2026, 1, 1))
