"""The job queue under real `distill-studio worker` processes: latency, throughput without loss, crash recovery.

Parts:
  latency     submit -> running latency of an idle worker (median, p95), on Redis and on the embedded broker (kombu's
              SQLAlchemy transport on a SQLite file in the data dir, i.e. STUDIO_BROKER_URL unset). N tiny jobs are
              submitted one at a time, each after the previous one has finished plus a random pause spanning one
              polling period of the broker (0.4 s on Redis), so the embedded broker's polling phase is sampled evenly.
              Latency = runs.started_at (the worker's claim) minus the wall clock just before Jobs.submit() is called.
              The database is SQLite in the data dir, whose timestamps are this machine's clock, the benchmark's own.
              The worker is warmed first (its pool child imports torch on its first job).
  throughput  2 workers (--concurrency 1 each) on Redis with PostgreSQL as the database, two batches of --jobs tiny
              jobs: submitted back to back by one process while the workers run (jobs/s over first created_at -> last
              finished_at), and queued while both workers' consumers are paused by Celery remote control, then
              resumed at once (jobs/s over first started_at -> last finished_at: the drain rate of a full queue).
              Loss checks: every run succeeded, attempts == 1, claimed exactly once (the workers' logs), no duplicate
              deliveries.
  recovery    a dmd2 distillation of toy2d-ring (preset toy2d, checkpoint every 50 steps) on Redis + PostgreSQL; past
              its first checkpoint the whole worker process group is killed with SIGKILL and a new worker is started.
              Recovery = from the kill (database clock) until the run is claimed again (started_at of attempt 2) and
              until it makes progress again (its first heartbeat past the checkpoint it resumed from). Cases:
                same_host          the dead owner is a pid on this host; the new worker starts at once and its reaper
                                   releases the run as soon as it sees the pid gone (default STUDIO_LEASE_S=60, which
                                   this path does not wait for, but the reaper passes come every lease_s / 3);
                same_host_delayed  the same, the new worker started 5 s after the kill (a supervisor's restart delay);
                lease              the owner is rewritten to 'otherhost:1' right after the kill, so no reaper can see it
                                   as a dead local pid and the run waits for its lease to lapse (STUDIO_LEASE_S=10;
                                   the default 60 s implies at most lease_s + lease_s/3 = 80 s plus the claim-to-
                                   progress time).

A tiny job is `sample` of teacher:toy2d-ring-gmm (the analytic ring) at 4 seeds and 1 step. Every part uses its own
temporary data dir, its own STUDIO_QUEUE and Redis database 12 (--redis-url), and PostgreSQL databases it creates
and drops (--postgres-url names the server's admin database). Workers run in their own sessions and are stopped by
killing their process groups. The default run takes about 5 minutes on 2 cores.

Run:  .venv/bin/python benchmarks/queue_bench.py [--part latency|throughput|recovery|all|report] [--n 100] [--jobs 100]
Writes benchmarks/results/queue.json (a part run alone replaces only its own section) and queue.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import select, text, update  # noqa: E402

from storage.db import make_engine, make_session_factory, server_now, session_scope  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from storage.models import Checkpoint, Run  # noqa: E402
from storage.settings import get_settings  # noqa: E402
from workers.celery_app import get_app  # noqa: E402
from workers.submit import BrokerUnavailable, Jobs  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CLI = Path(sys.executable).parent / "distill-studio"
TINY = {"model": "teacher:toy2d-ring-gmm", "seeds": [0, 1, 2, 3], "steps": 1}
DISTILL = {"teacher": "toy2d-ring", "method": "dmd2", "preset": "toy2d", "iterations": 2000, "checkpoint_every": 50}
KILL_AFTER_STEP = 75  # past the first checkpoint (50); progress is logged every 25 steps at 2,000 iterations
TARGETS = {"latency_median_s": 1.0, "recovery_s": 120.0}
STUDIO_KEYS = ("STUDIO_DATA_DIR", "STUDIO_DATABASE_URL", "STUDIO_BROKER_URL", "STUDIO_QUEUE", "STUDIO_LEASE_S")
TAG = f"qb{os.getpid()}x{uuid.uuid4().hex[:4]}"  # in every queue, worker and database name of this invocation


# -- environment: data dirs, databases, workers --------------------------------------------------------------

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


class Postgres:
    """Throw-away databases on the local server, dropped at the end."""

    def __init__(self, admin_url: str):
        self.admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
        self.names: list[str] = []

    def create(self, name: str) -> str:
        db = f"{TAG}_{name}".replace("-", "_").lower()
        with self.admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{db}"'))
        self.names.append(db)
        return self.admin.url.set(database=db).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as connection:
            for db in self.names:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        self.admin.dispose()


def clean_redis(url: str) -> None:
    """Remove this invocation's queues, bindings and unacked messages (a killed worker leaves its message there)."""
    import redis

    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"*{TAG}*"):
        client.delete(key)
    for key in client.scan_iter(match="_kombu.binding.*"):
        stale = [m for m in client.smembers(key) if TAG.encode() in m]
        if stale:
            client.srem(key, *stale)
    for tag, payload in client.hgetall("unacked").items():
        if TAG.encode() in payload:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (pos - lo)


def describe_failure(exc: BaseException) -> str:
    """The exception's first line, plus the last error a worker logged (its log tail is in the message)."""
    message = str(exc)
    errors = [line for line in message.splitlines() if re.match(r"^\w*(Error|Exception)\b", line)]
    head = message.splitlines()[0] if message else type(exc).__name__
    return head + (f" ... {errors[-1]}" if errors else "")


def finished(setup: Setup, ids) -> bool:
    return all(r.status in ("succeeded", "failed", "cancelled") for r in setup.runs(ids).values())


# -- the parts -----------------------------------------------------------------------------------------------

def latency_on(setup: Setup, n: int) -> dict:
    setup.activate()
    worker = setup.worker("w1")
    worker.wait_ready()
    for _ in range(2):  # warm-up: the pool child imports torch and loads the teacher on its first job
        rid = setup.jobs.submit("sample", TINY)
        wait_for(lambda rid=rid: finished(setup, [rid]), 180, f"warm-up run {rid}")
    with get_app().connection_for_write() as connection:
        polling = getattr(connection.transport, "polling_interval", None)  # virtual transports poll; Redis blocks
    polling = None if setup.settings.broker_url.startswith("redis") else polling
    rows = []
    for i in range(n):
        # The worker is idle; a pause spanning one polling period puts the submission at a uniform phase of its polling.
        time.sleep(random.uniform(0.1, 0.1 + (polling or 0.4)))
        called = datetime.now(UTC)
        rid = setup.jobs.submit("sample", TINY)
        returned = datetime.now(UTC)
        wait_for(lambda rid=rid: finished(setup, [rid]), 120, f"run {rid}", interval=0.02)
        run = setup.run(rid)
        if run.status != "succeeded":
            raise RuntimeError(f"run {rid} ended {run.status}: {run.error}")
        rows.append({"run": rid, "submit_s": (returned - called).total_seconds(),
                     "latency_s": (run.started_at - called).total_seconds(),
                     "after_return_s": (run.started_at - returned).total_seconds(),
                     "job_s": (run.finished_at - run.started_at).total_seconds()})
        if (i + 1) % 10 == 0:
            print(f"  {setup.name}: {i + 1}/{n}", flush=True)
    lat = [r["latency_s"] for r in rows]
    return {"broker": setup.settings.broker_url.split("://")[0], "database": "sqlite (data dir)", "n": n,
            "polling_interval_s": polling,
            "median_s": statistics.median(lat), "p95_s": quantile(lat, 0.95), "max_s": max(lat),
            "median_after_return_s": statistics.median(r["after_return_s"] for r in rows),
            "median_submit_call_s": statistics.median(r["submit_s"] for r in rows),
            "median_job_s": statistics.median(r["job_s"] for r in rows), "rows": rows}


def part_latency(args, setups: list[Setup]) -> dict:
    out = {}
    for name, broker in (("redis", args.redis_url), ("embedded", None)):
        setup = Setup(f"lat-{name}", broker=broker)
        setups.append(setup)
        print(f"latency on {name} (n = {args.n})", flush=True)
        try:
            out[name] = latency_on(setup, args.n)
            print(f"  median {out[name]['median_s'] * 1000:.0f} ms, p95 {out[name]['p95_s'] * 1000:.0f} ms", flush=True)
        except (RuntimeError, TimeoutError, BrokerUnavailable) as exc:  # one broker failing must not hide the other
            out[name] = {"broker": broker or "sqla+sqlite (embedded)", "error": describe_failure(exc)}
            print(f"  FAILED: {out[name]['error']}", flush=True)
        setup.close(args.keep)
    return out


def batch_result(setup: Setup, workers: list[Worker], ids: list[int], timed_out: bool) -> dict:
    """Loss checks and timings of one batch of tiny runs (all times on the database's clock)."""
    time.sleep(1.0)  # let the logs catch up with the last claims
    runs = setup.runs(ids)
    claims = {w.label: [c for c in w.claims() if c in runs] for w in workers}
    claimed = [c for cs in claims.values() for c in cs]
    statuses = {s: sum(r.status == s for r in runs.values()) for s in sorted({r.status for r in runs.values()})}
    done = [r for r in runs.values() if r.finished_at is not None]
    succeeded = statuses.get("succeeded", 0)
    start, end = min(r.created_at for r in runs.values()), max((r.finished_at for r in done), default=None)
    wall = (end - start).total_seconds() if end else None
    return {"jobs": len(ids), "succeeded": succeeded, "lost": len(ids) - succeeded, "statuses": statuses,
            "timed_out": timed_out, "attempts_not_1": sorted(r.id for r in runs.values() if r.attempts != 1),
            "claimed_once": len(claimed) == len(set(claimed)) == len(ids),
            "claims_per_worker": {k: len(v) for k, v in claims.items()},
            "wall_s": wall, "jobs_per_s": succeeded / wall if wall else 0.0,
            "submit_span_s": (max(r.created_at for r in runs.values()) - start).total_seconds(),
            "drain_s": (end - min(r.started_at for r in done)).total_seconds() if done else None,
            "median_job_s": statistics.median((r.finished_at - r.started_at).total_seconds() for r in done),
            "median_queue_s": statistics.median((r.started_at - r.created_at).total_seconds() for r in done)}


def run_batch(setup: Setup, n: int) -> tuple[list[int], bool]:
    ids = [setup.jobs.submit("sample", TINY) for _ in range(n)]
    try:
        wait_for(lambda: finished(setup, ids), max(300, 3 * n), f"{n} runs", interval=0.1)
        return ids, False
    except TimeoutError:
        return ids, True


def part_throughput(args, setups: list[Setup], pg: Postgres) -> dict:
    setup = Setup("thr", broker=args.redis_url, database=pg.create("thr"))
    setups.append(setup)
    setup.activate()
    workers = [setup.worker("w1"), setup.worker("w2")]
    for w in workers:
        w.wait_ready()
    # Warm both pool children: while one imports torch on its first job, the other takes the next message.
    warm = [setup.jobs.submit("sample", TINY) for _ in range(2)]
    wait_for(lambda: finished(setup, warm), 180, "warm-up runs")
    if not all(w.claims() for w in workers):
        extra = [setup.jobs.submit("sample", TINY) for _ in range(4)]
        wait_for(lambda: finished(setup, extra), 180, "extra warm-up runs")

    # 1. End to end: one process submits the jobs back to back while the two workers drain the queue.
    print(f"throughput: {args.jobs} jobs on 2 workers, submitted while they run", flush=True)
    ids, timed_out = run_batch(setup, args.jobs)
    end_to_end = batch_result(setup, workers, ids, timed_out)

    # 2. Drain: the workers stop consuming (Celery remote control), the jobs are queued, both resume at once.
    print(f"throughput: {args.jobs} jobs on 2 workers, drained from a full queue", flush=True)
    control = get_app().control
    nodes = [f"{w.label}@{socket.gethostname()}" for w in workers]  # --name LABEL@%h
    paused = control.cancel_consumer(setup.queue, destination=nodes, reply=True, timeout=10)
    if len(paused) != len(nodes):
        raise RuntimeError(f"cancel_consumer: {len(paused)} of {len(nodes)} workers replied ({paused})")
    ids = [setup.jobs.submit("sample", TINY) for _ in range(args.jobs)]
    untouched = all(r.status == "queued" for r in setup.runs(ids).values())  # nothing was taken while paused
    resumed = control.add_consumer(setup.queue, destination=nodes, reply=True, timeout=10)
    try:
        wait_for(lambda: finished(setup, ids), max(300, 3 * args.jobs), "the drain batch", interval=0.1)
        timed_out = False
    except TimeoutError:
        timed_out = True
    drain = batch_result(setup, workers, ids, timed_out)
    drain["queued_while_paused"] = untouched and len(resumed) == len(nodes)
    drain["jobs_per_s"] = drain["succeeded"] / drain["drain_s"] if drain["drain_s"] else 0.0
    return {"broker": "redis", "database": "postgresql", "workers": 2, "concurrency": 1,
            "duplicate_deliveries": sum(w.duplicates() for w in workers), "end_to_end": end_to_end, "drain": drain}


def log_time(log: str, pattern: str) -> float | None:
    """Epoch seconds of the first worker-log line matching `pattern` (Celery stamps lines in local time, to the ms)."""
    m = re.search(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [^\]]*\] " + pattern, log, re.MULTILINE)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else None


def pid_alive(pid: int) -> bool:
    """What the reaper's owner_is_dead asks: does kill(pid, 0) succeed? (It does for a zombie not yet reaped.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recovery_case(setup: Setup, rewrite_owner: bool, restart_delay_s: float) -> dict:
    setup.activate()
    first = setup.worker("w1")
    first.wait_ready()
    rid = setup.jobs.submit("distill", DISTILL)
    wait_for(lambda: (r := setup.run(rid)).status == "running" and r.step >= KILL_AFTER_STEP, 600,
             f"run {rid} past step {KILL_AFTER_STEP}", interval=0.1)
    first.kill()
    kill_wall, kill_mono = time.time(), time.monotonic()
    killed_at = setup.db_now()  # the database's clock, like started_at and heartbeat_at
    first.proc.wait()  # reaps the main process; its orphaned pool child is reaped by PID 1
    with session_scope(setup.factory) as session:
        run = session.get(Run, rid)
        owner = run.lease_owner
        if rewrite_owner:  # a worker on another machine died: no reaper can see its pid
            changed = session.execute(update(Run).where(Run.id == rid, Run.status == "running")
                                      .values(lease_owner="otherhost:1")).rowcount
            if changed != 1:
                raise RuntimeError(f"run {rid}: could not rewrite its owner (not running any more?)")
        at_kill = {"step": run.step, "attempts": run.attempts,
                   "lease_left_s": (run.lease_expires_at - killed_at).total_seconds()}
        resume_step = session.scalar(select(Checkpoint.step).where(Checkpoint.run_id == rid)
                                     .order_by(Checkpoint.step.desc()).limit(1)) or 0
    owner_pid = int(owner.rpartition(":")[2])
    owner_gone = None

    def watch_owner() -> None:
        nonlocal owner_gone
        if owner_gone is None and not pid_alive(owner_pid):
            owner_gone = time.monotonic() - kill_mono

    while time.monotonic() - kill_mono < restart_delay_s:  # a supervisor's restart delay
        watch_owner()
        time.sleep(0.02)
    second = setup.worker("w2")
    started_second = time.monotonic() - kill_mono

    def progressing():
        watch_owner()
        r = setup.run(rid)
        if r.status in ("failed", "cancelled", "succeeded"):
            raise RuntimeError(f"run {rid} ended {r.status} during recovery: {r.error}")
        return r if (r.status == "running" and r.attempts > at_kill["attempts"] and r.heartbeat_at > r.started_at
                     and r.step > resume_step) else None

    run = wait_for(progressing, 600, f"run {rid} to make progress again", interval=0.05)
    log = second.text()
    path = ("dead local pid" if "worker process on this host is dead" in log else
            "lease expired" if "lease expired" in log else "other (see the worker log)")
    ready, requeued = log_time(log, r"\S+ ready\."), log_time(log, rf"run {rid}: .*requeued")
    setup.jobs.cancel(rid)
    try:
        wait_for(lambda: setup.run(rid).status == "cancelled", 120, f"run {rid} to cancel", interval=0.2)
    except TimeoutError:
        pass
    return {"lease_s": setup.settings.lease_s, "reaper_interval_s": setup.settings.lease_s / 3, "run": rid,
            "step_at_kill": at_kill["step"], "resumed_from": resume_step, "steps_lost": at_kill["step"] - resume_step,
            "lease_left_at_kill_s": at_kill["lease_left_s"], "owner_at_kill": owner,
            "owner_rewritten_to": "otherhost:1" if rewrite_owner else None, "path": path,
            "owner_pid_gone_s": owner_gone, "restart_delay_s": restart_delay_s, "new_worker_started_s": started_second,
            "new_worker_ready_s": None if ready is None else ready - kill_wall,
            "requeued_s": None if requeued is None else requeued - kill_wall,
            "claimed_s": (run.started_at - killed_at).total_seconds(),
            "progress_s": (run.heartbeat_at - killed_at).total_seconds(), "attempts": run.attempts}


RECOVERY_CASES = [  # (key, STUDIO_LEASE_S, rewrite the owner, restart delay)
    ("same_host", None, False, 0.0),          # the new worker is started at once
    ("same_host_delayed", None, False, 5.0),  # ... or after a 5 s restart delay, as a supervisor with back-off would
    ("lease", 10.0, True, 0.0),
]


def part_recovery(args, setups: list[Setup], pg: Postgres) -> dict:
    out = {}
    database = pg.create("rec")
    for name, lease_s, rewrite, delay in RECOVERY_CASES:
        setup = Setup(f"rec-{name}", broker=args.redis_url, database=database, lease_s=lease_s)
        setups.append(setup)
        print(f"recovery: {name}", flush=True)
        out[name] = recovery_case(setup, rewrite, delay)
        setup.close(args.keep)
        print(f"  claimed again {out[name]['claimed_s']:.1f} s after the kill, progress at {out[name]['progress_s']:.1f} s "
              f"({out[name]['path']})", flush=True)
    # Claim to first progress (the new pool child imports torch, loads the checkpoint, runs to the next log step): the
    # slowest case's, since the machine may be loaded.
    overhead = max(c["progress_s"] - c["claimed_s"] for c in out.values())
    out["default_lease_bound_s"] = {"lease_s": 60.0, "requeue_bound_s": 60.0 + 60.0 / 3,
                                    "claim_to_progress_s": overhead, "bound_s": 60.0 + 60.0 / 3 + overhead}
    return out


# -- report ----------------------------------------------------------------------------------------------------

def git_revision() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    rev = out.stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "workers", "storage"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return rev + ("+dirty" if dirty else "")


def machine() -> dict:
    return {"host": socket.gethostname(), "machine": platform.machine(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "system": platform.platform(), "python": platform.python_version(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


def fmt(x: float | None, unit: str = "s", digits: int = 2) -> str:
    if x is None:
        return "—"
    x = 0.0 if abs(x) < 0.0005 else x  # no "-0 ms"
    return f"{x * 1000:.0f} ms" if unit == "ms" else f"{x:.{digits}f} s"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render(doc: dict) -> str:
    lines = ["# Job queue: latency, throughput, crash recovery", "",
             "Generated by `benchmarks/queue_bench.py` with real `distill-studio worker` processes (`--concurrency 1`). "
             "A tiny job is a `sample` run of `teacher:toy2d-ring-gmm` at 4 seeds and 1 step.", ""]
    lat, thr, rec = doc.get("latency"), doc.get("throughput"), doc.get("recovery")
    lines += ["## Figures against the targets", "", "| figure | measured | target | verdict |", "|---|---|---|---|"]
    if lat:
        for name, label in (("redis", "Redis"), ("embedded", "embedded SQLite broker")):
            r = lat["result"][name]
            if "error" in r:
                lines.append(f"| submit → running, {label}, median (p95) | not measured: {r['error']} | median < 1 s "
                             "| **missed** |")
            else:
                lines.append(f"| submit → running, {label}, median (p95) | {fmt(r['median_s'], 'ms')} "
                             f"({fmt(r['p95_s'], 'ms')}) | median < 1 s | "
                             f"{verdict(r['median_s'] < TARGETS['latency_median_s'])} |")
    if thr:
        batches = [thr["result"]["end_to_end"], thr["result"]["drain"]]
        n = sum(b["jobs"] for b in batches)
        ok = all(b["lost"] == 0 and not b["attempts_not_1"] and b["claimed_once"] and not b["timed_out"] for b in batches)
        ok = ok and thr["result"]["duplicate_deliveries"] == 0
        lines.append(f"| {n} jobs on 2 workers ({len(batches)} batches): succeeded, claimed exactly once, attempts = 1 "
                     f"| {sum(b['succeeded'] for b in batches)}/{n}, {'yes' if all(b['claimed_once'] for b in batches) else 'no'}, "
                     f"{n - sum(len(b['attempts_not_1']) for b in batches)}/{n} | nothing lost | {verdict(ok)} |")
        e, d = batches
        lines.append(f"| throughput, {e['jobs']} jobs submitted while the workers run (wall, DB clock) "
                     f"| {e['jobs_per_s']:.1f} jobs/s ({fmt(e['wall_s'], digits=1)}) | — | — |")
        lines.append(f"| throughput, {d['jobs']} jobs from a full queue (drain) | {d['jobs_per_s']:.1f} jobs/s "
                     f"({fmt(d['drain_s'], digits=1)}) | — | — |")
    if rec:
        labels = {"same_host": "same host (dead pid), new worker at once",
                  "same_host_delayed": "same host (dead pid), new worker after 5 s",
                  "lease": f"lease path, STUDIO_LEASE_S={rec['result']['lease']['lease_s']:g}"}
        for key, label in labels.items():
            if key not in rec["result"]:
                continue
            c = rec["result"][key]
            lines.append(f"| recovery after killing the whole worker, {label}: claimed (progress) "
                         f"| {fmt(c['claimed_s'], digits=1)} ({fmt(c['progress_s'], digits=1)}) | < 2 min "
                         f"| {verdict(c['progress_s'] < TARGETS['recovery_s'])} |")
        b = rec["result"]["default_lease_bound_s"]
        lines.append(f"| lease path at the default STUDIO_LEASE_S=60 (bound, not measured) | ≤ {b['bound_s']:.0f} s "
                     f"(60 + 20 + {b['claim_to_progress_s']:.0f}) | < 2 min | {verdict(b['bound_s'] < TARGETS['recovery_s'])} |")
    if lat:
        lines += ["", "## Latency (idle worker, SQLite database in the data dir)", "",
                  "| broker | n | median | p95 | max | median after submit() returned | median submit() call "
                  "| median job |", "|---|---|---|---|---|---|---|---|"]
        for name, r in lat["result"].items():
            if "error" in r:
                lines.append(f"| {name} ({r['broker']}) | failed: {r['error']} | | | | | | |")
                continue
            lines.append(f"| {name} ({r['broker']}) | {r['n']} | {fmt(r['median_s'], 'ms')} | {fmt(r['p95_s'], 'ms')} "
                         f"| {fmt(r['max_s'], 'ms')} | {fmt(r['median_after_return_s'], 'ms')} "
                         f"| {fmt(r['median_submit_call_s'], 'ms')} | {fmt(r['median_job_s'], 'ms')} |")
        lines += ["", "Latency = `runs.started_at` (the worker's claim) − the wall clock just before `Jobs.submit()`; SQLite "
                  "stamps times with this machine's clock. The embedded broker's worker polls the queue table "
                  f"every {lat['result']['embedded'].get('polling_interval_s') or '?'} s (kombu's SQLAlchemy transport); "
                  "Redis delivers at once (BRPOP)."]
    if thr:
        lines += ["", "## Throughput (Redis + PostgreSQL, 2 workers × concurrency 1)", "",
                  "| batch | jobs | succeeded | statuses | claimed once | attempts ≠ 1 | claims per worker | wall | jobs/s "
                  "| submitting took | drain (first start → last finish) | median job | median created → started |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, label in (("end_to_end", "submitted while running"), ("drain", "from a full queue")):
            t = thr["result"][key]
            lines.append(f"| {label} | {t['jobs']} | {t['succeeded']} | {t['statuses']} | {'yes' if t['claimed_once'] else 'no'} "
                         f"| {len(t['attempts_not_1'])} | {list(t['claims_per_worker'].values())} | {fmt(t['wall_s'], digits=2)} "
                         f"| {t['jobs_per_s']:.1f} | {fmt(t['submit_span_s'], digits=2)} | {fmt(t['drain_s'], digits=2)} "
                         f"| {fmt(t['median_job_s'], 'ms')} | {fmt(t['median_queue_s'], 'ms')} |")
        d = thr["result"]["drain"]
        lines += ["", f"Duplicate deliveries logged by the workers: {thr['result']['duplicate_deliveries']}. All times are "
                  "PostgreSQL's clock. *Submitted while running*: one process submits the jobs back to back, so its "
                  "submit rate bounds the figure; jobs/s = jobs / (first `created_at` → last `finished_at`). *From a full "
                  "queue*: both workers stop consuming (Celery's `cancel_consumer`), the jobs are queued"
                  + ("" if d.get("queued_while_paused") else " (**but a worker took some while paused: not clean**)")
                  + ", both resume at once (`add_consumer`), and jobs/s = jobs / (first `started_at` → last "
                  "`finished_at`): the rate 2 workers drain a queue at, each message costing a Redis round trip, "
                  "the claim, the job and the finish on PostgreSQL."]
    if rec:
        lines += ["", "## Crash recovery (Redis + PostgreSQL; dmd2 on toy2d-ring, checkpoint every 50 steps)", "",
                  "| case | lease_s | step at kill → resumed from | lease left at kill | killed pool child gone "
                  "| new worker started / ready | requeued | claimed again | progress again | reaper saw |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for key in (k for k, *_ in RECOVERY_CASES if k in rec["result"]):
            c = rec["result"][key]
            lines.append(f"| {key} | {c['lease_s']:g} | {c['step_at_kill']} → {c['resumed_from']} "
                         f"| {fmt(c['lease_left_at_kill_s'], digits=1)} | {fmt(c.get('owner_pid_gone_s'), digits=1)} "
                         f"| {fmt(c.get('new_worker_started_s'), digits=1)} / {fmt(c.get('new_worker_ready_s'), digits=1)} "
                         f"| {fmt(c['requeued_s'], digits=1)} | {fmt(c['claimed_s'], digits=1)} "
                         f"| {fmt(c['progress_s'], digits=1)} | {c['path']} |")
        lines += ["", "Times are from the SIGKILL of the whole worker process group (the database's clock for *claimed* "
                  "and *progress*, this machine's for the rest; PostgreSQL runs on this machine). *Killed pool child "
                  "gone*: when `kill(pid, 0)` on the run's owner (the pool child, orphaned and a zombie until PID 1 "
                  "reaps it) first failed, which is what the reaper's dead-owner check asks. *Requeued* and *ready* are "
                  "the new worker's log lines. *Progress again* is the first heartbeat of the new attempt past the "
                  "checkpoint it resumed from. The reaper runs when a worker is ready and then every lease_s / 3; with "
                  "the default lease (60 s) a worker that dies on another machine is requeued at most lease_s + "
                  "lease_s/3 = 80 s after its last heartbeat."]
    lines += ["", "## Runs", "", "| part | git | when (UTC) | machine | load at start | command |", "|---|---|---|---|---|---|"]
    for part in ("latency", "throughput", "recovery"):
        if part in doc:
            p, m = doc[part], doc[part]["machine"]
            lines.append(f"| {part} | {p['git']} | {p['when']} | {m['host']}, {m['cpus']} CPUs, {m['machine']} "
                         f"| {m['load_avg_at_start']} | `{p['command']}` |")
    notes = {doc[p].get("note") for p in ("latency", "throughput", "recovery") if doc.get(p, {}).get("note")}
    lines += [""] + [f"Note: {n}" for n in sorted(notes)]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("latency", "throughput", "recovery", "all", "report"), default="all",
                        help="report: rebuild queue.md from queue.json without measuring")
    parser.add_argument("--n", type=int, default=100, help="latency samples per broker")
    parser.add_argument("--jobs", type=int, default=100, help="jobs in the throughput part")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12", help="a Redis database for this benchmark")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="an admin database on the server where throw-away databases are created")
    parser.add_argument("--note", default="", help="recorded with the results (e.g. 'the machine was shared')")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dirs (worker logs) for inspection")
    parser.add_argument("--no-save", action="store_true", help="print only; leave benchmarks/results alone")
    args = parser.parse_args()
    if args.n < 2 or args.jobs < 1:
        parser.error("--n must be at least 2 and --jobs at least 1")
    if not CLI.exists():
        parser.error(f"{CLI} not found: run with the project's virtual environment (.venv/bin/python)")
    if args.part == "report":
        (RESULTS / "queue.md").write_text(render(json.loads((RESULTS / "queue.json").read_text())))
        return
    parts = ("latency", "throughput", "recovery") if args.part == "all" else (args.part,)
    meta = {"git": git_revision(), "machine": machine(), "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
            "command": "python benchmarks/queue_bench.py " + " ".join(sys.argv[1:]), "note": args.note}
    setups: list[Setup] = []
    pg = Postgres(args.postgres_url) if {"throughput", "recovery"} & set(parts) else None
    results = {}
    try:
        for part in parts:
            started = time.monotonic()
            if part == "latency":
                result = part_latency(args, setups)
            elif part == "throughput":
                result = part_throughput(args, setups, pg)
            else:
                result = part_recovery(args, setups, pg)
            results[part] = {**meta, "seconds": round(time.monotonic() - started, 1), "result": result}
            print(json.dumps({k: v for k, v in result.items() if k != "rows"} if part != "latency" else
                             {b: {k: v for k, v in r.items() if k != "rows"} for b, r in result.items()}, indent=1,
                             default=str), flush=True)
    finally:
        for setup in setups:
            for worker in setup.workers:
                worker.stop()
            if not args.keep:
                shutil.rmtree(setup.data_dir, ignore_errors=True)
        if pg is not None:
            pg.drop_all()
        clean_redis(args.redis_url)
    if args.no_save:
        return
    path = RESULTS / "queue.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.update(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (RESULTS / "queue.md").write_text(render(doc))
    print(render(doc))


if __name__ == "__main__":
    main()
