"""Celery tasks: thin wrappers that take a run id and hand it to workers.jobs (imported lazily, never torch here)."""

from __future__ import annotations

from celery import shared_task


def _execute(run_id: int, kind: str) -> str:
    from workers.jobs import execute

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
