"""The supervisor of `up`'s local worker, on real child processes (stand-ins for the worker command)."""

from __future__ import annotations

import sys
import time

from app.local_worker import LocalWorker


def _wait(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_worker_that_dies_is_reported_and_restarted_with_backoff():
    lines: list[str] = []
    worker = LocalWorker([sys.executable, "-c", "import sys; sys.exit(3)"], say=lines.append).start()
    try:
        assert _wait(lambda: worker.restarts >= 2, timeout_s=10), lines  # 1 s, then 2 s of backoff
    finally:
        worker.stop()
    assert lines[0] == ("warning: the local worker exited with code 3; queued jobs wait until it is back "
                        "(restarting in 1 s)")
    assert "(restarting in 2 s)" in lines[1]


def test_stop_terminates_a_running_worker_and_does_not_restart_it():
    lines: list[str] = []
    worker = LocalWorker([sys.executable, "-c", "import time; time.sleep(60)"], say=lines.append).start()
    first = worker.process
    worker.stop()
    assert first.poll() is not None  # terminated, not left behind
    time.sleep(1.5)  # longer than the first backoff: a restart would have happened by now
    assert (worker.restarts, lines, worker.process) == (0, [], first)


def test_stop_kills_a_worker_that_ignores_sigterm():
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    worker = LocalWorker([sys.executable, "-c", code], stop_timeout_s=0.5, say=lambda _: None).start()
    time.sleep(0.5)  # let it install its handler
    t0 = time.monotonic()
    worker.stop()
    assert worker.process.poll() == -9 and time.monotonic() - t0 < 5
