"""Celery tasks: thin wrappers that take a run id and hand it to workers.jobs (imported lazily, never torch here)."""

from __future__ import annotations

from celery import shared_task
from celery.exceptions import Reject


def _execute(run_id: int, kind: str) -> str:
    from workers.jobs import SHUTDOWN, execute

    if SHUTDOWN.is_set():
        # This child's worker is shutting down and the child already handed a run back; a consumer that still polls
        # (kombu's SQLite transport does for a few seconds) must not have it claim the run again: back to the queue.
        raise Reject(f"run {run_id}: worker shutting down", requeue=True)
    return execute(int(run_id), kind)


@shared_task(name="studio.train_teacher")
def train_teacher(run_id: int) -> str:
    return _execute(run_id, "teacher")


@shared_task(name="studio.distill")
def distill(run_id: int) -> str:
    return _execute(run_id, "distill")


@shared_task(name="studio.sample")
def sample(run_id: int) -> str:
    return _execute(run_id, "sample")


@shared_task(name="studio.evaluate")
def evaluate(run_id: int) -> str:
    return _execute(run_id, "evaluate")


@shared_task(name="studio.export")
def export(run_id: int) -> str:
    return _execute(run_id, "export")
