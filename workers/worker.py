"""Start a worker: migrate the database, then run Celery's prefork worker with the reaper in its main process.

Torch-free: torch is imported by a pool child when its first job runs. One pool process per GPU (concurrency 1 on a
one-GPU machine); on a CPU-only machine one process already uses every core through torch's threads.
"""

from __future__ import annotations

import logging
import os

from celery import signals

from storage.migrate import upgrade
from storage.settings import get_settings
from workers.celery_app import get_app
from workers.reaper import Reaper


def run_worker(*, concurrency: int = 1, loglevel: str = "info", name: str | None = None) -> None:
    settings = get_settings()
    upgrade(settings.database_url)  # every process that starts runs the migrations (a no-op when up to date)
    logging.getLogger("distill_studio").setLevel(loglevel.upper())
    reaper = Reaper(interval_s=settings.lease_s / 3)
    signals.worker_ready.connect(lambda **_: reaper.start(), weak=False)
    signals.worker_shutting_down.connect(lambda **_: reaper.stop(), weak=False)
    get_app().worker_main([
        "worker", "--queues", settings.queue, "--concurrency", str(concurrency), "--pool", "prefork",
        "--loglevel", loglevel, "--hostname", name or f"studio-{os.getpid()}@%h",
        "--without-mingle", "--without-gossip",  # workers share nothing but the queue; start-up stays fast
    ])
