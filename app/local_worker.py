"""The worker that `distill-studio up` runs beside the web page, restarted if it dies.

A child process, so the web process never imports torch (docs/architecture.md#layers-and-the-import-rule). If it exits
on its own (a crash, an unrecoverable broker error), jobs would silently stop running: the supervisor says so on stderr
and starts it again, waiting longer after each quick failure (1 s, 2 s, 4 s … at most 60 s).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

WORKER_COMMAND = (sys.executable, "-m", "app.cli", "worker", "--loglevel", "warning")
MAX_BACKOFF_S = 60.0
STABLE_S = 60.0  # a worker that ran this long before exiting restarts at once: its failure was not a start-up loop


class LocalWorker:
    def __init__(self, command: Sequence[str] = WORKER_COMMAND, say: Callable[[str], None] | None = None,
                 stop_timeout_s: float = 30.0):
        self.command, self.stop_timeout_s = list(command), stop_timeout_s
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="local-worker", daemon=True)

    def start(self) -> LocalWorker:
        self.process = subprocess.Popen(self.command)
        self._thread.start()
        return self

    def _supervise(self) -> None:
        backoff = 1.0
        while True:
            started = time.monotonic()
            code = self.process.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= STABLE_S:
                backoff = 1.0
            self.say(f"warning: the local worker exited with code {code}; queued jobs wait until it is back "
                     f"(restarting in {backoff:g} s)")
            if self._stopping.wait(backoff):
                return
            backoff = min(2 * backoff, MAX_BACKOFF_S)
            self.process = subprocess.Popen(self.command)
            self.restarts += 1

    def stop(self) -> None:
        """Ask the worker to finish (running jobs checkpoint and go back to the queue), then make sure it is gone."""
        self._stopping.set()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
