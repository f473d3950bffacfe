"""Start a worker: migrate the database, then run Celery's prefork worker with the reaper in its main process.

Torch-free: torch is imported by a pool child when its first job runs. One pool process per GPU (concurrency 1 on a
one-GPU machine); on a CPU-only machine one process already uses every core through torch's threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

from celery import signals

from storage.migrate import upgrade
from storage.settings import get_settings
from workers.celery_app import get_app
from workers.jobs import proc_stat
from workers.reaper import Reaper


def _children() -> list[int]:
    """Pids of this process's children (the pool), read from /proc; empty where there is no /proc."""
    me = str(os.getpid())
    return [int(entry.name) for entry in Path("/proc").glob("[0-9]*") if proc_stat(entry.name)[1:2] == [me]]


def run_worker(*, concurrency: int = 1, loglevel: str = "info", name: str | None = None) -> None:
    settings = get_settings()
    upgrade(settings.database_url)  # every process that starts runs the migrations (a no-op when up to date)
    logging.getLogger("distill_studio").setLevel(loglevel.upper())
    reaper = Reaper(interval_s=settings.lease_s / 3)
    signals.worker_ready.connect(lambda **_: reaper.start(), weak=False)

    def shutting_down(**_) -> None:
        reaper.stop()
        for pid in _children():  # each running job checkpoints and hands its run back (workers/jobs.py)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR2)

    signals.worker_shutting_down.connect(shutting_down, weak=False)
    # Until a job listens for SIGUSR2 (workers/jobs.py), a pool child ignores it: billiard's handler would kill an idle
    # child at every shutdown ("exited with 'exitcode 70'"). billiard keeps an ignored signal ignored after this.
    signals.worker_process_init.connect(lambda **_: signal.signal(signal.SIGUSR2, signal.SIG_IGN), weak=False)
    # app.start returns Celery's exit code (worker_main drops it): an unrecoverable error must not exit 0.
    raise SystemExit(get_app().start(argv=[
        "worker", "--queues", settings.queue, "--concurrency", str(concurrency), "--pool", "prefork",
        "--loglevel", loglevel, "--hostname", name or f"studio-{os.getpid()}@%h",
        "--without-mingle", "--without-gossip",  # workers share nothing but the queue; start-up stays fast
    ]) or 0)
