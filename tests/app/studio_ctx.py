"""Putting runs into each state for the studio's handler tests, as workers do: through storage.repo, in the test's
studio database (the `ctx` fixture in tests/app/conftest.py). Plain functions, imported by the test modules."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from storage import repo
from storage.db import session_scope

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
WORKER = "host:1"


def all_runs(ctx) -> list:
    with session_scope(ctx.factory) as session:
        return list(reversed(repo.list_runs(session=session)))


def create(ctx, kind: str = "distill", spec: dict | None = None, out_dir: str | None = None) -> int:
    spec = spec or {"teacher": "digits", "method": "dmd2", "student_steps": 1}
    with session_scope(ctx.factory) as session:
        return repo.create_run(session=session, kind=kind, spec=spec, total=100, out_dir=out_dir).id


def claim(ctx, run_id: int, now: datetime = T0, lease_s: float = 600) -> None:
    with session_scope(ctx.factory) as session:
        assert repo.claim_run(session=session, run_id=run_id, worker=WORKER, lease_s=lease_s, now=now)


def progress(ctx, run_id: int, step: int, now: datetime = T0) -> None:
    with session_scope(ctx.factory) as session:
        assert repo.heartbeat(session=session, run_id=run_id, worker=WORKER, lease_s=600, step=step, now=now)


def finish(ctx, run_id: int, status: str = "succeeded", error: str | None = None, now: datetime = T0) -> None:
    with session_scope(ctx.factory) as session:
        assert repo.finish_run(session=session, run_id=run_id, worker=WORKER, status=status, error=error, now=now)


def checkpoints(ctx, run_id: int, *steps: int) -> None:
    with session_scope(ctx.factory) as session:
        for step in steps:
            repo.record_checkpoint(session=session, run_id=run_id, step=step, path=f"runs/{run_id}/ckpt-{step}")


def get(ctx, run_id: int):
    with session_scope(ctx.factory) as session:
        run = repo.get_run(session=session, run_id=run_id)
        session.expunge(run)
        return run


def broker_messages(ctx) -> int:
    with sqlite3.connect(ctx.data_dir / "broker.db") as db:
        return db.execute("SELECT count(*) FROM kombu_message").fetchone()[0]
