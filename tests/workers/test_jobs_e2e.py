"""Jobs end to end (docs/architecture.md#jobs): `distill-studio` worker, submit, cancel, resume and up as real processes on real
Redis and real databases. Runs are tiny (toy2d-ring, DMD2, preset toy2d, a few hundred iterations, a checkpoint every
50 steps); every wait polls the database or a log with a deadline and fails with the worker logs. See conftest.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from storage import repo
from storage.db import session_scope

from .harness import Studio, alive, children, log_every

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
CRASH_ITERATIONS = 400  # long enough (seconds) to stop mid-run after a checkpoint or two


def assert_finished(studio: Studio, run_id: int, iterations: int, attempts: int):
    """Succeeded at exactly `iterations` steps with its student, one metric row per (key, step), and every logging
    step present once: a resumed run neither restarted nor skipped nor repeated a step."""
    run = studio.run(run_id)
    context = f"run {run_id}: {vars(run)}\n{studio.logs()}"
    assert (run.status, run.step, run.total, run.attempts) == ("succeeded", iterations, iterations, attempts), context
    assert (run.error, run.lease_owner, run.cancel_requested) == (None, None, False), context
    assert run.finished_at is not None and run.out_dir == f"runs/{run_id}", context
    out = studio.data_dir / run.out_dir
    assert (out / "model.safetensors").stat().st_size > 0
    student = json.loads((out / "student.json").read_text())
    assert (student["teacher"], student["method"], student["train"]["iterations"]) == ("toy2d-ring", "dmd2", iterations)
    assert studio.metric_duplicates(run_id) == [], context
    every = log_every(iterations)
    assert studio.metric_steps(run_id) == sorted(set(range(every, iterations + 1, every)) | {iterations}), context
    checkpoints = studio.checkpoints(run_id)
    assert checkpoints[-1][0] == iterations, checkpoints
    assert all(path == f"runs/{run_id}/checkpoints/step-{step:07d}.safetensors" for step, path in checkpoints)
    return run


def wait_until(condition, what: str, studio: Studio, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s\n{studio.logs()}", pytrace=False)
        time.sleep(0.05)
    return value


def session_members(sid: int) -> list[int]:
    """Live processes whose session id (field 6 of /proc/PID/stat) is `sid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(stat.parent.name))
    return found


# -- the happy path ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("database", BACKENDS)
def test_a_submitted_distillation_runs_on_a_worker_to_its_student(make_studio, database):
    studio = make_studio(database=database)
    worker = studio.start_worker()
    run_id = studio.submit(iterations=300)

    running = studio.wait_for(run_id, lambda r: r.status == "running" and 0 < r.step < 300
                              and studio.metric_count(run_id) > 0, "progress and metric rows while running")
    assert running.total == 300 and running.lease_owner and running.heartbeat_at and running.attempts == 1
    done = studio.wait_status(run_id, "succeeded")
    assert_finished(studio, run_id, 300, attempts=1)

    shown = json.loads(studio.cli("runs", "show", str(run_id), "--json").stdout)
    assert (shown["status"], shown["step"], shown["progress"]) == ("succeeded", 300, 1.0)
    assert shown["metrics"] and all(isinstance(v, float) for v in shown["metrics"].values()), shown
    listed = json.loads(studio.cli("runs", "list", "--json").stdout)
    assert [(r["id"], r["status"]) for r in listed] == [(run_id, "succeeded")]

    # A late duplicate of its message is a logged no-op: the claim refuses a finished run.
    studio.send_task("studio.distill", [run_id])
    log = studio.wait_log(worker, "duplicate delivery ignored")
    assert f"run {run_id}: succeeded, held by None; duplicate delivery ignored" in log
    again = studio.run(run_id)
    assert (again.status, again.attempts, again.step, again.finished_at) == ("succeeded", 1, 300, done.finished_at)


# -- crashes -------------------------------------------------------------------------------------------------

def test_a_worker_killed_whole_mid_run_is_resumed_from_its_checkpoint_by_the_next(studio):
    first = studio.start_worker()
    run_id = studio.submit(iterations=CRASH_ITERATIONS)
    studio.wait_for(run_id, lambda r: r.status == "running" and studio.last_checkpoint(run_id) >= 100,
                    "a checkpoint at step >= 100")
    pool = first.pool()
    assert len(pool) == 1, pool
    assert studio.run(run_id).lease_owner.endswith(f":{pool[0]}")

    first.kill_group()  # kill -9 of the main process and its pool child at once
    wait_until(lambda: not any(alive(pid) for pid in [first.pid, *pool]), "the killed worker is gone", studio)
    killed = studio.run(run_id)
    assert killed.status == "running" and killed.step < CRASH_ITERATIONS  # no one has noticed yet
    checkpoint = studio.last_checkpoint(run_id)
    resumed_at = time.monotonic()

    second = studio.start_worker()
    studio.wait_status(run_id, "succeeded")
    steps = studio.steps_since(run_id, resumed_at)
    assert min(steps) >= checkpoint, f"the step counter went below checkpoint {checkpoint}: {steps}"
    assert_finished(studio, run_id, CRASH_ITERATIONS, attempts=2)
    assert f"run {run_id}: its worker process on this host is dead; requeued" in second.text()


def test_a_killed_pool_child_is_replaced_and_its_run_resumes_from_its_checkpoint(studio):
    worker = studio.start_worker()
    run_id = studio.submit(iterations=CRASH_ITERATIONS)
    studio.wait_for(run_id, lambda r: r.status == "running" and studio.last_checkpoint(run_id) >= 100,
                    "a checkpoint at step >= 100")
    [child] = worker.pool()
    assert studio.run(run_id).lease_owner.endswith(f":{child}")

    os.kill(child, signal.SIGKILL)
    wait_until(lambda: not alive(child), "the killed pool child is gone", studio)
    checkpoint = studio.last_checkpoint(run_id)
    resumed_at = time.monotonic()

    studio.wait_status(run_id, "succeeded")
    steps = studio.steps_since(run_id, resumed_at)
    assert min(steps) >= checkpoint, f"the step counter went below checkpoint {checkpoint}: {steps}"
    assert_finished(studio, run_id, CRASH_ITERATIONS, attempts=2)
    assert worker.proc.poll() is None, "the worker's main process must outlive its pool child"
    assert child not in worker.pool()


def test_the_reaper_requeues_a_run_whose_lease_expired_on_another_host(make_studio):
    studio = make_studio(lease_s=3)
    limbo = f"{studio.queue}-limbo"
    studio.queues.add(limbo)
    run_id = studio.submit(iterations=200, STUDIO_QUEUE=limbo)  # its message goes where no worker listens
    assert studio.queued_messages(limbo) == 1
    with session_scope(studio.factory) as session:  # a worker on another machine took it and vanished
        assert repo.claim_run(session=session, run_id=run_id, worker="otherhost:1", lease_s=2)
    held = studio.run(run_id)
    assert (held.status, held.lease_owner, held.attempts) == ("running", "otherhost:1", 1)

    worker = studio.start_worker()
    studio.wait_status(run_id, "succeeded")
    run = assert_finished(studio, run_id, 200, attempts=2)
    assert run.started_at >= held.lease_expires_at, "claimed before the foreign lease expired"
    log = worker.text()
    assert f"run {run_id}: lease expired; requeued" in log
    assert "is dead" not in log  # not the dead-pid path: the owner is on another host


# -- cancel, resume, and a checkpoint that cannot be read -----------------------------------------------------

def test_cancel_stops_a_running_run_at_a_checkpoint_and_resume_finishes_it(studio):
    studio.start_worker()
    run_id = studio.submit(iterations=CRASH_ITERATIONS)
    studio.wait_for(run_id, lambda r: r.status == "running" and r.step >= 100, "step >= 100")

    asked = time.monotonic()
    answer = json.loads(studio.cli("runs", "cancel", str(run_id), "--json").stdout)
    assert answer == {"id": run_id, "status": "running", "cancel_requested": True}
    cancelled = studio.wait_status(run_id, "cancelled", timeout=30)
    assert time.monotonic() - asked < 10, "a cancel must stop the run within seconds"
    assert (cancelled.error, cancelled.lease_owner, cancelled.attempts) == (None, None, 1)
    checkpoint = studio.last_checkpoint(run_id)
    assert cancelled.step <= checkpoint < CRASH_ITERATIONS, (cancelled.step, checkpoint)
    assert (studio.data_dir / dict(studio.checkpoints(run_id))[checkpoint]).is_file()
    assert not (studio.data_dir / cancelled.out_dir / "model.safetensors").exists()

    answer = json.loads(studio.cli("runs", "resume", str(run_id), "--json").stdout)
    assert answer == {"id": run_id, "status": "queued"}
    studio.wait_status(run_id, "succeeded")
    steps = [step for _t, _status, step, _attempts in studio.history[run_id]]
    assert steps == sorted(steps), f"the step counter went back: {steps}"
    assert_finished(studio, run_id, CRASH_ITERATIONS, attempts=2)


def test_a_corrupt_checkpoint_fails_the_run_once_with_a_clear_error(make_studio):
    studio = make_studio(lease_s=3)
    worker = studio.start_worker()
    run_id = studio.submit(iterations=CRASH_ITERATIONS)
    studio.wait_for(run_id, lambda r: r.status == "running" and r.step >= 60, "step >= 60")
    studio.cli("runs", "cancel", str(run_id), "--json")
    cancelled = studio.wait_status(run_id, "cancelled", timeout=30)

    latest = sorted((studio.data_dir / cancelled.out_dir / "checkpoints").glob("step-*.safetensors"))[-1]
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    studio.cli("runs", "resume", str(run_id), "--json")
    failed = studio.wait_status(run_id, "failed")
    assert failed.error.startswith(f"checkpoint {latest.name} cannot be read ("), failed.error
    assert "delete it to resume from the one before" in failed.error
    assert (failed.attempts, failed.lease_owner) == (2, None)

    # No crash loop: the message was acked, no reaper requeues a failed run, the worker lives on.
    quiet_until = time.monotonic() + 3 * studio.lease_s / 3 + 1  # three reaper passes and then some
    while time.monotonic() < quiet_until:
        run = studio.run(run_id)
        assert (run.status, run.attempts, run.error) == ("failed", 2, failed.error), studio.logs()
        time.sleep(0.2)
    assert worker.proc.poll() is None
    assert worker.text().count(f"run {run_id}: claimed by") == 2


# -- bad input -----------------------------------------------------------------------------------------------

SUBMIT = {"--teacher": "toy2d-ring", "--method": "dmd2", "--preset": "toy2d", "--iterations": "300",
          "--checkpoint-every": "50"}
BAD_SPECS = [
    ({"--preset": "nope"}, [], "error: preset: unknown preset 'nope' for dmd2"),
    ({"--teacher": "nope"}, [], "error: teacher: unknown name 'nope'"),
    ({"--teacher": "toy2d-ring-gmm"}, [], "error: teacher: 'toy2d-ring-gmm' is analytic"),
    ({"--iterations": "100", "--checkpoint-every": "200"}, [], "error: checkpoint_every: must be at most iterations (100)"),
    ({}, ["--set", "ttur_ratio=0"], "error: dmd2: ttur_ratio must be an integer >= 1, got 0"),
]


def test_an_invalid_spec_is_refused_before_any_row_or_message(studio):
    for changes, extra, message in BAD_SPECS:
        args = [part for item in {**SUBMIT, **changes}.items() for part in item] + extra
        result = studio.cli("distill", "--submit", *args, "--json", expect=2)
        lines = result.stderr.strip().splitlines()
        assert result.stdout == "" and len(lines) == 1 and lines[0].startswith(message), (args, result.stderr)
    assert studio.run_count() == 0
    assert studio.queued_messages() == 0
    assert not (studio.data_dir / "runs").exists()


def test_a_message_for_an_unknown_run_or_the_wrong_kind_is_a_logged_no_op(studio):
    worker = studio.start_worker()
    limbo = f"{studio.queue}-limbo"
    studio.queues.add(limbo)
    run_id = studio.submit(iterations=200, STUDIO_QUEUE=limbo)
    with session_scope(studio.factory) as session:  # cancelled while queued: no reaper will ever send it
        assert repo.request_cancel(session=session, run_id=run_id)
    before = vars(studio.run(run_id))

    studio.send_task("studio.distill", [999])
    studio.wait_log(worker, "run 999: no such run; message ignored")
    studio.send_task("studio.sample", [run_id])
    studio.wait_log(worker, f"run {run_id}: is a distill run, not sample; message ignored")
    wait_until(lambda: worker.text().count("'unknown'") == 2, "both tasks ended as 'unknown'", studio)
    log = worker.text()

    assert vars(studio.run(run_id)) == before
    assert studio.run_count() == 1
    assert not (studio.data_dir / "runs" / "999").exists()
    assert studio.queued_messages() == 0
    assert worker.proc.poll() is None and "Traceback" not in log

    # A worker that never ran a job stops cleanly on SIGTERM: no pool child killed on the way out.
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.proc.wait(timeout=60) == 0, studio.logs()
    assert "exited with" not in worker.text(), studio.logs()


def test_a_worker_whose_database_is_unreachable_exits_at_once_with_one_line(studio):
    started = time.monotonic()
    result = studio.cli("worker", expect=2, timeout=60, STUDIO_DATABASE_URL="postgresql://postgres@127.0.0.1:1/x")
    took = time.monotonic() - started
    lines = result.stderr.strip().splitlines()
    assert result.stdout == "" and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: database postgresql+psycopg://postgres@127.0.0.1:1/x is unreachable: "), lines
    assert took < 15, f"took {took:.1f}s"


# -- shutting down -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("broker", ["redis", "embedded"])
def test_a_worker_stopped_with_sigterm_hands_its_run_back_once(make_studio, broker):
    studio = make_studio(broker=broker)
    first = studio.start_worker()
    run_id = studio.submit(iterations=CRASH_ITERATIONS)
    studio.wait_for(run_id, lambda r: r.status == "running" and r.step >= 100, "step >= 100")

    os.kill(first.pid, signal.SIGTERM)  # the main process only, as `docker stop` or `up` does
    try:
        first.proc.wait(timeout=60)
    except Exception:
        pytest.fail(f"the worker did not stop within 60 s of SIGTERM\n{studio.logs()}", pytrace=False)
    wait_until(lambda: not session_members(first.pid), "the stopped worker's pool is gone", studio)
    handed = studio.run(run_id)
    context = f"{vars(handed)}\n{studio.logs()}"
    assert (handed.status, handed.attempts, handed.lease_owner, handed.error) == ("queued", 1, None, None), context
    checkpoint = studio.last_checkpoint(run_id)
    assert handed.step <= checkpoint < CRASH_ITERATIONS, context
    assert first.text().count(f"run {run_id}: claimed by") == 1, context
    assert first.proc.returncode == 0 and "exited with" not in first.text(), context

    studio.start_worker()
    studio.wait_status(run_id, "succeeded")
    steps = [step for _t, _status, step, _attempts in studio.history[run_id]]
    assert steps == sorted(steps), f"the step counter went back: {steps}"
    assert_finished(studio, run_id, CRASH_ITERATIONS, attempts=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serves(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        with opener.open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_up_serves_the_studio_and_its_local_worker_runs_jobs_on_the_embedded_broker(make_studio):
    studio = make_studio(broker="embedded")  # STUDIO_BROKER_URL unset: kombu's SQLite transport in the data dir
    port = _free_port()
    up, log = studio.start(["up", "--no-auth", "--port", str(port)], "up", STUDIO_DATABASE_URL=None)

    def serving() -> bool:
        if up.poll() is not None:
            pytest.fail(f"`up` exited with {up.returncode}\n{studio.logs()}", pytrace=False)
        return _serves(f"http://127.0.0.1:{port}/")

    wait_until(serving, f"`up` serving on port {port}", studio, timeout=120)
    started = re.search(r"local worker started \(pid (\d+)\) on sqlite:///(\S+)", log.read_text())
    assert started, log.read_text()
    worker_pid = int(started.group(1))
    assert Path(started.group(2)) == studio.data_dir / "broker.db" and alive(worker_pid)

    run_id = studio.submit(iterations=200, STUDIO_DATABASE_URL=None)
    studio.wait_status(run_id, "succeeded", timeout=120)
    assert_finished(studio, run_id, 200, attempts=1)
    assert (studio.data_dir / "broker.db").is_file() and studio.redis.exists(studio.queue) == 0  # no Redis involved
    pool = children(worker_pid)
    assert len(pool) == 1, pool

    os.kill(up.pid, signal.SIGTERM)
    try:
        up.wait(timeout=60)
    except Exception:
        pytest.fail(f"`up` did not stop within 60 s of SIGTERM\n{studio.logs()}", pytrace=False)
    wait_until(lambda: not any(alive(pid) for pid in [worker_pid, *pool]), "`up`'s worker exits with it", studio)
    assert session_members(up.pid) == []
