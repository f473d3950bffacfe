"""Runs from creation to cancel and resume, metrics and checkpoints, and the constraints behind them."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from storage.db import session_scope
from storage.models import Checkpoint, Image, Metric, Run
from storage.repo import (
    claim_run,
    create_run,
    finish_run,
    get_run,
    is_cancel_requested,
    list_runs,
    record_checkpoint,
    record_metrics,
    request_cancel,
    requeue_expired,
    resume_run,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SPEC = {"teacher": "toy2d-ring", "method": "dmd2", "config": {"student_steps": 1, "lr": 1e-4}, "seeds": [0, 1]}


def _run(db, kind: str = "distill", **kw) -> int:
    with session_scope(db) as s:
        return create_run(session=s, kind=kind, spec=SPEC, **kw).id


def _running(db, worker: str = "w") -> int:
    run_id = _run(db)
    with session_scope(db) as s:
        assert claim_run(session=s, run_id=run_id, worker=worker, lease_s=60, now=T0)
    return run_id


def test_create_run_stores_the_spec_and_defaults(db):
    before = datetime.now(UTC) - timedelta(minutes=5)  # the database's clock may differ a little from ours
    with session_scope(db) as s:
        run = create_run(session=s, kind="teacher", spec=SPEC, total=400)
    summary = (run.kind, run.status, run.step, run.total, run.attempts, run.cancel_requested)  # readable after close
    assert summary == ("teacher", "queued", 0, 400, 0, False)
    assert run.out_dir == f"runs/{run.id}"
    assert run.created_at.tzinfo is UTC and before < run.created_at < datetime.now(UTC) + timedelta(minutes=5)
    with session_scope(db) as s:
        stored = get_run(session=s, run_id=run.id)
        assert stored.spec == SPEC and stored.error is None and stored.started_at is None
        assert get_run(session=s, run_id=run.id + 1) is None
    with session_scope(db) as s:
        assert create_run(session=s, kind="sample", spec={}, out_dir="samples/grid-1").out_dir == "samples/grid-1"


@pytest.mark.parametrize("kind", ["train", "", "Distill"])
def test_invalid_kind_is_rejected_before_any_row(db, kind):
    with session_scope(db) as s:
        with pytest.raises(ValueError, match=rf"^kind: must be one of teacher, distill, sample, evaluate, export, got '{kind}'$"):
            create_run(session=s, kind=kind, spec=SPEC)
        assert list_runs(session=s) == []


@pytest.mark.parametrize(("spec", "message"), [(["a"], "spec: must be a JSON object, got list"),
                                               ({"x": object()}, "spec: not storable as JSON"),
                                               ({"lr": math.nan}, "spec: not storable as JSON")])
def test_invalid_spec_is_rejected(db, spec, message):
    with session_scope(db) as s, pytest.raises(ValueError, match=f"^{message}"):
        create_run(session=s, kind="distill", spec=spec)


def test_out_dir_must_stay_in_the_data_dir(db):
    with session_scope(db) as s, pytest.raises(ValueError, match="'../elsewhere' must be relative"):
        create_run(session=s, kind="distill", spec=SPEC, out_dir="../elsewhere")


def test_the_database_rejects_an_unknown_status_or_kind(db):
    for values in ({"status": "paused"}, {"kind": "train"}, {"attempts": -1}):
        with pytest.raises(IntegrityError, match="ck_runs_"), session_scope(db) as s:
            s.add(Run(**{"kind": "distill", "spec": {}, **values}))


def test_list_runs_newest_first_with_filters(db):
    ids = [_run(db, "teacher"), _run(db), _run(db, "sample")]
    with session_scope(db) as s:
        request_cancel(session=s, run_id=ids[1], now=T0)
    with session_scope(db) as s:
        assert [r.id for r in list_runs(session=s)] == ids[::-1]
        assert [r.id for r in list_runs(session=s, limit=2)] == ids[:0:-1]
        assert [r.id for r in list_runs(session=s, status="queued")] == [ids[2], ids[0]]
        assert [r.id for r in list_runs(session=s, kind="teacher")] == [ids[0]]
        with pytest.raises(ValueError, match="^status: must be one of .*got 'done'$"):
            list_runs(session=s, status="done")
        with pytest.raises(ValueError, match="^kind: must be one of .*got 'x'$"):
            list_runs(session=s, kind="x")


def test_metrics_are_bulk_inserted_and_nan_becomes_null(db):
    run_id = _running(db)
    with session_scope(db) as s:
        record_metrics(session=s, run_id=run_id, step=10, values={"loss/student": 0.5, "loss/fake": math.nan})
        record_metrics(session=s, run_id=run_id, step=20, values={"loss/student": 0.25, "grad/norm": math.inf})
        record_metrics(session=s, run_id=run_id, step=30, values={})
    with session_scope(db) as s:
        rows = s.execute(select(Metric.step, Metric.key, Metric.value).order_by(Metric.step, Metric.key)).all()
    assert [tuple(r) for r in rows] == [(10, "loss/fake", None), (10, "loss/student", 0.5),
                                        (20, "grad/norm", math.inf), (20, "loss/student", 0.25)]


def test_checkpoints_are_relative_and_idempotent(db):
    run_id = _running(db)
    with session_scope(db) as s:
        record_checkpoint(session=s, run_id=run_id, step=100, path="runs/1/ckpt-100")
        record_checkpoint(session=s, run_id=run_id, step=100, path="runs/1/ckpt-100b")  # a retried write
        record_checkpoint(session=s, run_id=run_id, step=200, path="runs/1/ckpt-200")
        with pytest.raises(ValueError, match="must be relative"):
            record_checkpoint(session=s, run_id=run_id, step=300, path="/etc/passwd")
    with session_scope(db) as s:
        rows = s.execute(select(Checkpoint.step, Checkpoint.path).order_by(Checkpoint.step)).all()
    assert [tuple(r) for r in rows] == [(100, "runs/1/ckpt-100b"), (200, "runs/1/ckpt-200")]


def test_deleting_a_run_deletes_its_metrics_and_checkpoints(db):
    run_id = _running(db)
    with session_scope(db) as s:
        record_metrics(session=s, run_id=run_id, step=1, values={"loss": 1.0})
        record_checkpoint(session=s, run_id=run_id, step=1, path="runs/1/ckpt-1")
    with session_scope(db) as s:
        s.delete(get_run(session=s, run_id=run_id))
    with session_scope(db) as s:
        assert s.scalars(select(Metric)).all() == [] and s.scalars(select(Checkpoint)).all() == []
    with pytest.raises(IntegrityError), session_scope(db) as s:  # foreign keys are enforced (SQLite too)
        record_metrics(session=s, run_id=run_id, step=2, values={"loss": 1.0})


def test_cancel_a_queued_run_at_once(db):
    run_id = _run(db)
    with session_scope(db) as s:
        assert request_cancel(session=s, run_id=run_id, now=T0)
    with session_scope(db) as s:
        run = get_run(session=s, run_id=run_id)
        assert (run.status, run.finished_at) == ("cancelled", T0)
        assert not claim_run(session=s, run_id=run_id, worker="w", lease_s=60, now=T0)
        assert not request_cancel(session=s, run_id=run_id, now=T0)  # nothing left to cancel


def test_cancel_a_running_run_through_its_worker(db):
    run_id = _running(db, worker="w")
    with session_scope(db) as s:
        assert not is_cancel_requested(session=s, run_id=run_id)
        assert request_cancel(session=s, run_id=run_id, now=T0)
    with session_scope(db) as s:
        assert is_cancel_requested(session=s, run_id=run_id)
        assert get_run(session=s, run_id=run_id).status == "running"  # until the worker stops
        assert finish_run(session=s, run_id=run_id, worker="w", status="cancelled", now=T0)
    with session_scope(db) as s:
        assert get_run(session=s, run_id=run_id).status == "cancelled"
        assert not is_cancel_requested(session=s, run_id=run_id + 1)


def test_a_pending_cancel_ends_a_dead_workers_run(db):
    run_id = _running(db)
    with session_scope(db) as s:
        request_cancel(session=s, run_id=run_id, now=T0)
    later = T0 + timedelta(minutes=2)
    with session_scope(db) as s:
        assert not claim_run(session=s, run_id=run_id, worker="other", lease_s=60, now=later)
        assert requeue_expired(session=s, now=later) == []
    with session_scope(db) as s:
        run = get_run(session=s, run_id=run_id)
        assert (run.status, run.finished_at, run.lease_owner) == ("cancelled", later, None)


@pytest.mark.parametrize("status", ["cancelled", "failed"])
def test_resume_queues_a_stopped_run_again(db, status):
    run_id = _running(db, worker="w")
    with session_scope(db) as s:
        request_cancel(session=s, run_id=run_id, now=T0)
        finish_run(session=s, run_id=run_id, worker="w", status=status, error="stopped", now=T0)
    with session_scope(db) as s:
        assert resume_run(session=s, run_id=run_id)
        assert not resume_run(session=s, run_id=run_id)  # already queued
    with session_scope(db) as s:
        run = get_run(session=s, run_id=run_id)
        assert (run.status, run.error, run.finished_at, run.cancel_requested) == ("queued", None, None, False)
        assert claim_run(session=s, run_id=run_id, worker="w2", lease_s=60, now=T0)
    with session_scope(db) as s:
        assert get_run(session=s, run_id=run_id).attempts == 2


def test_succeeded_runs_cannot_be_resumed(db):
    run_id = _running(db, worker="w")
    with session_scope(db) as s:
        finish_run(session=s, run_id=run_id, worker="w", status="succeeded", now=T0)
    with session_scope(db) as s:
        assert not resume_run(session=s, run_id=run_id)


def test_an_image_is_unique_per_model_seed_condition_and_steps(db):
    def image(**kw) -> Image:
        return Image(**{"model": "teacher:digits", "seed": 17, "steps": 4, "path": "images/a.png", **kw})

    with session_scope(db) as s:
        s.add_all([image(), image(class_id=3), image(prompt="a red square"), image(steps=8)])
    with pytest.raises(IntegrityError, match="uq_images|UNIQUE constraint failed: images"), session_scope(db) as s:
        s.add(image(path="images/b.png"))
