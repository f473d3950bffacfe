"""The one Celery app (docs/architecture.md#jobs).

Torch-free, like every module a worker imports at start-up: the prefork pool forks its children from this
process, and a parent that has started torch's thread pools can deadlock them. Torch is imported by a child when
its first job runs (workers/jobs.py).

Delivery is at-least-once and the database decides: a task carries only a run id, the worker claims the run with a
compare-and-set, so a duplicate or late message is a no-op. `acks_late` + `reject_on_worker_lost` put the message
back when a pool child dies; a worker that dies whole is covered by the lease and the reaper (workers/reaper.py).
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from storage.settings import Settings, get_settings

TASK_NAMES = {"teacher": "studio.train_teacher", "distill": "studio.distill", "sample": "studio.sample",
              "evaluate": "studio.evaluate", "export": "studio.export"}


def make_app(settings: Settings) -> Celery:
    app = Celery("distill_studio", broker=settings.broker_url, include=["workers.tasks"])
    redis = settings.broker_url.startswith(("redis://", "rediss://"))
    app.conf.update(
        task_acks_late=True,              # ack after the job, so a dead child's message is redelivered
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,     # a worker holds no message it cannot start: jobs run minutes, not ms
        task_ignore_result=True,          # results live in the database, not in a result backend
        task_default_queue=settings.queue,
        task_routes={"studio.*": {"queue": settings.queue}},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=redis,    # for flower; the SQLite broker has no fan-out exchange to carry events
        task_send_sent_event=redis,
        broker_transport_options=(
            {} if redis else
            # SQLite waits for a writer's commit instead of failing at once. kombu's SQLAlchemy transport hands every
            # option to create_engine, so its polling interval (1 s) cannot be set here: "polling_interval" fails.
            {"connect_args": {"timeout": 30}}),
    )
    return app


@lru_cache(maxsize=1)
def get_app() -> Celery:
    """The process-wide app, built from the settings on first use."""
    return make_app(get_settings())
