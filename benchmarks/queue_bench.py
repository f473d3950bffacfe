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
import random
import shutil
import socket
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Siblings (benchmarks/ is the script's folder): the environment, the recovery part, the report.
from queue_recovery import part_recovery  # noqa: E402
from queue_report import RESULTS, git_revision, machine, render  # noqa: E402
from queue_setup import CLI, TAG, Setup, Worker, describe_failure, finished, wait_for  # noqa: E402

from tests.services import PostgresServer, clean_redis  # noqa: E402
from workers.celery_app import get_app  # noqa: E402
from workers.submit import BrokerUnavailable  # noqa: E402

TINY = {"model": "teacher:toy2d-ring-gmm", "seeds": [0, 1, 2, 3], "steps": 1}


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
    # p95 by linear interpolation between order statistics (numpy's default), so small n still gives a figure between
    # the two nearest samples rather than jumping to the maximum.
    return {"broker": setup.settings.broker_url.split("://")[0], "database": "sqlite (data dir)", "n": n,
            "polling_interval_s": polling,
            "median_s": statistics.median(lat), "p95_s": float(np.quantile(lat, 0.95)), "max_s": max(lat),
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


def part_throughput(args, setups: list[Setup], pg: PostgresServer) -> dict:
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
    pg = PostgresServer.connect(args.postgres_url, prefix=TAG) if {"throughput", "recovery"} & set(parts) else None
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
        clean_redis(redis.Redis.from_url(args.redis_url), TAG)
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
