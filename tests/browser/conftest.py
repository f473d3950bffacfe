"""A live `distill-studio up` and Debian's Chromium (never `playwright install`) for the browser tests.

The server runs in its own data dir on a free port with the embedded broker and its supervised local worker, exactly
what `make run` starts. Chromium missing is a failure, not a skip (docs/architecture.md#set-up-and-tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = os.environ.get("STUDIO_TEST_CHROMIUM", "/usr/bin/chromium")
_SCRIPT = Path(sys.executable).with_name("distill-studio")
CLI = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "app.cli"]
SCREENSHOTS = Path(os.environ.get("STUDIO_TEST_SCREENSHOTS", Path(__file__).resolve().parents[2] / "test-output"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Studio:
    """One `distill-studio up` process; `url` once it answers."""

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.data_dir = data_dir
        environ = {**os.environ, "STUDIO_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                   "STUDIO_LEASE_S": "20", **(env or {})}
        for key in ("STUDIO_DATABASE_URL", "STUDIO_BROKER_URL", "STUDIO_USERS", "STUDIO_USERS_FILE"):
            if key not in (env or {}):
                environ.pop(key, None)
        self.log = (data_dir.parent / f"studio-{self.port}.log").open("w")
        self.process = subprocess.Popen([*CLI, "up", "--port", str(self.port), *args], env=environ,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 90.0) -> Studio:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"distill-studio up exited with {self.process.returncode}: {self.output()}")
            try:
                if httpx.get(self.url, timeout=2).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"studio did not answer in {timeout} s: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    server = Studio(tmp_path_factory.mktemp("studio") / "data", "--no-auth").wait()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium (never `playwright install`)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, studio):
    """A fresh page on the studio that records every request leaving localhost."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.outside = []
    pg.on("request", lambda r: pg.outside.append(r.url)
          if not r.url.startswith(("http://127.0.0.1", "http://localhost", "data:", "blob:")) else None)
    pg.set_default_timeout(30_000)
    pg.goto(studio.url)
    pg.get_by_role("tab", name="Runs").wait_for()
    yield pg
    context.close()


def shoot(pg, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    return path
