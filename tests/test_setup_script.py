"""scripts/test-services.sh, which `make test` and .ci/run call before pytest: it finds or provides PostgreSQL, Redis,
docker-compose and Chromium, and where it may not install (not root, or STUDIO_SETUP_INSTALL=0) it names each missing
piece with the command to run and exits non-zero."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "test-services.sh"


def run_script(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_everything_present_passes_and_changes_nothing():
    """The suite is running, so the services answer: a second run is a no-op that succeeds without installing."""
    done = run_script(STUDIO_SETUP_INSTALL="0")
    assert done.returncode == 0, done.stderr
    assert "installing" not in done.stderr and "starting" not in done.stderr


def test_missing_piece_without_install_rights_names_the_command_and_fails(tmp_path):
    done = run_script(STUDIO_SETUP_INSTALL="0", STUDIO_CHROMIUM=str(tmp_path / "no-chromium"))
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert "test-services: chromium is missing: run `sudo apt-get install -y chromium`" in lines
    assert lines[-1] == "test-services: the tests need these; nothing was run"
    assert not any("docker-compose" in line or "PostgreSQL" in line or "Redis" in line for line in lines)


def test_makefile_runs_the_script_before_pytest_and_ci_calls_make_test():
    makefile = (SCRIPT.parents[1] / "Makefile").read_text()
    assert "test: services $(STAMP)" in makefile and "bash scripts/test-services.sh" in makefile
    ci = [line for line in (SCRIPT.parents[1] / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == "make test"
    run_target = makefile.split("\nrun:")[1].split("\n\n")[0]
    assert "services" not in run_target and "test-services" not in run_target  # `make run` needs no server
