"""The queue benchmark's recovery part: kill a worker in the middle of a distillation, time until it runs again.

The cases are described in benchmarks/queue_bench.py's docstring. Imported by queue_bench.py, which puts the
repository root on sys.path first.
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime

from queue_setup import Setup, wait_for
from sqlalchemy import select, update

from storage.db import session_scope
from storage.models import Checkpoint, Run
from tests.services import PostgresServer

DISTILL = {"teacher": "toy2d-ring", "method": "dmd2", "preset": "toy2d", "iterations": 2000, "checkpoint_every": 50}
KILL_AFTER_STEP = 75  # past the first checkpoint (50); progress is logged every 25 steps at 2,000 iterations


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


def part_recovery(args, setups: list[Setup], pg: PostgresServer) -> dict:
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
