"""The queue benchmark's environment: data dirs, queues and databases (Setup) and real worker processes (Worker).

Imported by benchmarks/queue_bench.py, which puts the repository root on sys.path first.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from storage.db import make_engine, make_session_factory, server_now, session_scope
from storage.migrate import upgrade
from storage.models import Run
from storage.settings import get_settings
from workers.celery_app import get_app
from workers.submit import Jobs

CLI = Path(sys.executable).parent / "distill-studio"
STUDIO_KEYS = ("STUDIO_DATA_DIR", "STUDIO_DATABASE_URL", "STUDIO_BROKER_URL", "STUDIO_QUEUE", "STUDIO_LEASE_S")
TAG = f"qb{os.getpid()}x{uuid.uuid4().hex[:4]}"  # in every queue, worker and database name of this invocation


class Setup:
    """One data dir, queue, broker and database; `activate()` points this process's settings and Celery app at it."""

    def __init__(self, name: str, *, broker: str | None, database: str | None = None, lease_s: float | None = None):
        self.name = name
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"{TAG}-{name}-"))
        self.queue = f"{TAG}-{name}"
        values = {"STUDIO_DATA_DIR": str(self.data_dir), "STUDIO_QUEUE": self.queue, "STUDIO_BROKER_URL": broker,
                  "STUDIO_DATABASE_URL": database, "STUDIO_LEASE_S": None if lease_s is None else str(lease_s)}
        self.studio_env = {k: v for k, v in values.items() if v is not None}
        base = {k: v for k, v in os.environ.items() if k not in STUDIO_KEYS}
        self.env = {**base, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **self.studio_env}
        self.workers: list[Worker] = []

    def activate(self) -> None:
        for key in STUDIO_KEYS:
            os.environ.pop(key, None)
        os.environ.update(self.studio_env)
        get_settings.cache_clear()
        get_app.cache_clear()
        self.settings = get_settings()
        upgrade(self.settings.database_url)
        self.engine = make_engine(self.settings.database_url)
        self.factory = make_session_factory(self.engine)
        self.jobs = Jobs(settings=self.settings, factory=self.factory)

    def worker(self, label: str) -> Worker:
        worker = Worker(self, label)
        self.workers.append(worker)
        return worker

    def runs(self, ids) -> dict[int, Run]:
        with session_scope(self.factory) as session:
            return {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(list(ids))))}

    def run(self, run_id: int) -> Run:
        return self.runs([run_id])[run_id]

    def db_now(self) -> datetime:
        with session_scope(self.factory) as session:
            return server_now(session)

    def close(self, keep: bool) -> None:
        for worker in self.workers:
            worker.stop()
        get_app().close()
        self.engine.dispose()
        if not keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class Worker:
    """A real `distill-studio worker --concurrency 1` in a session of its own, logging at info to a file."""

    def __init__(self, setup: Setup, label: str):
        self.label, self.log = f"{TAG}-{label}", setup.data_dir / f"worker-{label}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([str(CLI), "worker", "--concurrency", "1", "--loglevel", "info",
                                          "--name", f"{self.label}@%h"], env=setup.env, cwd=setup.data_dir,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.stopped = False

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.label} exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
        return " ready." in self.text()

    def wait_ready(self, timeout: float = 180) -> None:
        wait_for(self.ready, timeout, f"worker {self.label} ready", interval=0.1)

    def claims(self) -> list[int]:
        return [int(m) for m in re.findall(r"run (\d+): claimed by", self.text())]

    def duplicates(self) -> int:
        return self.text().count("duplicate delivery ignored")

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process, its reaper thread and the pool child."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # warm shutdown
                self.proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()  # whatever is left of the group (a pool child that outlived its parent)
        self.proc.wait()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def describe_failure(exc: BaseException) -> str:
    """The exception's first line, plus the last error a worker logged (its log tail is in the message)."""
    message = str(exc)
    errors = [line for line in message.splitlines() if re.match(r"^\w*(Error|Exception)\b", line)]
    head = message.splitlines()[0] if message else type(exc).__name__
    return head + (f" ... {errors[-1]}" if errors else "")


def finished(setup: Setup, ids) -> bool:
    return all(r.status in ("succeeded", "failed", "cancelled") for r in setup.runs(ids).values())
