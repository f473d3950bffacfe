"""The harness of the end-to-end job tests: real `distill-studio` processes, real Redis and databases, no mocks.

Each test gets its own data dir (tmp_path), its own database (a SQLite file there, or a throw-away PostgreSQL
database) and its own uniquely named queue on Redis database 10 of 127.0.0.1:6379 (STUDIO_TEST_REDIS_URL names
another); what the test leaves on Redis under that name is deleted afterwards. Workers start in a session of their
own (start_new_session), so a test can kill -9 the whole worker (main process and pool) with one killpg, and teardown
always does. A missing Redis or PostgreSQL fails these tests; it never skips them (docs/architecture.md#set-up-and-tests).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from sqlalchemy import func, select, text

from storage import repo
from storage.db import make_engine, make_session_factory, session_scope
from storage.models import TERMINAL_STATUSES, Checkpoint, Metric, Run
from tests.services import clean_redis

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("STUDIO_TEST_REDIS_URL", "redis://127.0.0.1:6379/10")
_SCRIPT = Path(sys.executable).with_name("distill-studio")
CLI = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "app.cli"]
RUN_COLUMNS = [c.name for c in Run.__table__.columns]


def log_every(iterations: int) -> int:
    """The logging interval workers.local.distill gives the training loop."""
    return max(1, min(25, iterations // 20))


def children(pid: int) -> list[int]:
    """Live child pids of `pid`, from /proc (no psutil): field 4 of /proc/PID/stat, after the ')' ending the name."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return sorted(found)


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pool(self) -> list[int]:
        return children(self.pid)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """kill -SIG the whole worker: its process group is its session (start_new_session)."""
        with suppress(ProcessLookupError):
            os.killpg(self.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=30)


@dataclass
class Studio:
    """One test's data dir, database, queue and processes."""

    tmp_path: Path
    database_url: str
    broker_url: str | None          # None: the embedded SQLite broker in the data dir
    redis: redis.Redis
    queue: str
    lease_s: float = 6
    workers: list[Worker] = field(default_factory=list)
    others: list[tuple[subprocess.Popen, Path]] = field(default_factory=list)  # `up`, in a session of its own
    history: dict[int, list[tuple[float, str, int, int]]] = field(default_factory=dict)  # (t, status, step, attempts)

    def __post_init__(self):
        self.data_dir = self.tmp_path / "data"
        self.engine = make_engine(self.database_url)
        self.factory = make_session_factory(self.engine)
        self.queues = {self.queue}

    # -- processes ---------------------------------------------------------------------------------------------

    def env(self, **overrides: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}
        # One torch thread: these tiny runs gain nothing from more, and two threads on a busy 2-core machine spin
        # against each other (a run then takes 10x longer).
        env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", STUDIO_DATA_DIR=str(self.data_dir),
                   STUDIO_DATABASE_URL=self.database_url, STUDIO_QUEUE=self.queue, STUDIO_LEASE_S=str(self.lease_s))
        if self.broker_url:
            env["STUDIO_BROKER_URL"] = self.broker_url
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def cli(self, *args: str, expect: int | None = 0, timeout: float = 120, **env: str | None):
        result = subprocess.run(CLI + list(args), env=self.env(**env), cwd=ROOT, capture_output=True, text=True,
                                timeout=timeout)
        if expect is not None:
            assert result.returncode == expect, (f"distill-studio {' '.join(args)} -> {result.returncode}\n"
                                                 f"stdout: {result.stdout}\nstderr: {result.stderr}\n{self.logs()}")
        return result

    def submit(self, iterations: int = 300, checkpoint_every: int = 50, **env: str | None) -> int:
        result = self.cli("distill", "--submit", "--teacher", "toy2d-ring", "--method", "dmd2", "--preset", "toy2d",
                          "--iterations", str(iterations), "--checkpoint-every", str(checkpoint_every), "--json", **env)
        out = json.loads(result.stdout)
        assert out["kind"] == "distill" and out["status"] == "queued", out
        return out["id"]

    def start_worker(self, wait_ready: bool = True, **env: str | None) -> Worker:
        n = len(self.workers) + 1
        log = self.tmp_path / f"worker-{n}.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen(CLI + ["worker", "--loglevel", "info", "--name", f"{self.queue}-w{n}@%h"],
                                    env=self.env(**env), cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        worker = Worker(proc, log)
        self.workers.append(worker)
        if wait_ready:  # migrated, connected to the broker, consuming
            self.wait_log(worker, " ready.", timeout=60)
        return worker

    def start(self, args: list[str], name: str, **env: str | None) -> tuple[subprocess.Popen, Path]:
        log = self.tmp_path / f"{name}.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen(CLI + args, env=self.env(**env), cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.others.append((proc, log))
        return proc, log

    def wait_log(self, worker: Worker, needle: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while needle not in (content := worker.text()):
            if worker.proc.poll() is not None:
                pytest.fail(f"worker {worker.pid} exited with {worker.proc.returncode} before logging {needle!r}\n"
                            f"{self.logs()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"worker {worker.pid} did not log {needle!r} within {timeout}s\n{self.logs()}", pytrace=False)
            time.sleep(0.05)
        return content

    def logs(self, lines: int = 40) -> str:
        parts = []
        for worker in self.workers:
            tail = worker.text().splitlines()[-lines:]
            parts.append(f"--- worker {worker.pid} ({worker.log.name}), last {len(tail)} lines:\n" + "\n".join(tail))
        for proc, log in self.others:
            tail = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
            parts.append(f"--- {' '.join(proc.args[len(CLI):])} ({log.name}), last {len(tail)} lines:\n" + "\n".join(tail))
        return "\n".join(parts)

    # -- the database ------------------------------------------------------------------------------------------

    def run(self, run_id: int) -> SimpleNamespace:
        with session_scope(self.factory) as session:
            row = repo.get_run(session=session, run_id=run_id)
            assert row is not None, f"run {run_id} does not exist"
            run = SimpleNamespace(**{name: getattr(row, name) for name in RUN_COLUMNS})
        self.history.setdefault(run_id, []).append((time.monotonic(), run.status, run.step, run.attempts))
        return run

    def wait_for(self, run_id: int, until: Callable[[SimpleNamespace], bool], what: str,
                 timeout: float = 180) -> SimpleNamespace:
        """Poll the run until `until(run)`; fails at once if it ends otherwise, with the worker logs."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if until(run):
                return run
            if run.status in TERMINAL_STATUSES or time.monotonic() > deadline:
                why = f"ended {run.status}" if run.status in TERMINAL_STATUSES else f"not within {timeout}s"
                pytest.fail(f"run {run_id}: waited for {what}, {why}: status={run.status} step={run.step}/{run.total} "
                            f"attempts={run.attempts} owner={run.lease_owner} error={run.error}\n{self.logs()}",
                            pytrace=False)
            time.sleep(0.05)

    def wait_status(self, run_id: int, status: str, timeout: float = 180) -> SimpleNamespace:
        return self.wait_for(run_id, lambda r: r.status == status, status, timeout)

    def steps_since(self, run_id: int, t0: float) -> list[int]:
        return [step for t, _status, step, _attempts in self.history.get(run_id, []) if t >= t0]

    def checkpoints(self, run_id: int) -> list[tuple[int, str]]:
        with session_scope(self.factory) as session:
            rows = session.execute(select(Checkpoint.step, Checkpoint.path).where(Checkpoint.run_id == run_id)
                                   .order_by(Checkpoint.step)).all()
        return [(step, path) for step, path in rows]

    def last_checkpoint(self, run_id: int) -> int:
        return max((step for step, _ in self.checkpoints(run_id)), default=0)

    def metric_count(self, run_id: int) -> int:
        with session_scope(self.factory) as session:
            return session.scalar(select(func.count()).select_from(Metric).where(Metric.run_id == run_id))

    def metric_duplicates(self, run_id: int) -> list[tuple[str, int, int]]:
        with session_scope(self.factory) as session:
            return [tuple(row) for row in session.execute(
                select(Metric.key, Metric.step, func.count()).where(Metric.run_id == run_id)
                .group_by(Metric.key, Metric.step).having(func.count() > 1))]

    def metric_steps(self, run_id: int) -> list[int]:
        with session_scope(self.factory) as session:
            return list(session.scalars(select(Metric.step).where(Metric.run_id == run_id).distinct()
                                        .order_by(Metric.step)))

    def run_count(self) -> int:
        with session_scope(self.factory) as session:
            return session.scalar(select(func.count()).select_from(Run))

    def execute(self, sql: str, **params) -> None:
        with self.engine.begin() as connection:
            connection.execute(text(sql), params)

    # -- the broker --------------------------------------------------------------------------------------------

    def send_task(self, name: str, args: list) -> None:
        """Send a task message straight through a Celery app for this test's broker and queue (as Jobs.send does)."""
        from storage.settings import Settings
        from workers.celery_app import make_app

        settings = Settings(data_dir=self.data_dir, database_url=self.database_url, broker_url=self.broker_url or "",
                            queue=self.queue)
        app = make_app(settings)
        try:
            with app.connection_for_write() as connection:
                app.send_task(name, args=args, queue=self.queue, connection=connection)
        finally:
            app.close()

    def queued_messages(self, queue: str | None = None) -> int:
        return self.redis.llen(queue or self.queue)

    # -- teardown ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        for proc in [p for p, _ in self.others] + [w.proc for w in self.workers]:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the whole session: pool children, `up`'s worker
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        self.engine.dispose()
        self._clean_redis()

    def _clean_redis(self) -> None:
        """Delete what this test's queues left on Redis: the lists, bindings, pidbox entries, unacked messages."""
        for queue in self.queues:
            clean_redis(self.redis, queue)
