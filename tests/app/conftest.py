"""Fixtures for the CLI tests: `data_dir`, a temporary STUDIO_DATA_DIR, and `cli`, an in-process `distill-studio`
runner that re-raises any exception other than a clean exit (a traceback is a bug). For the studio's handler tests: a
real migrated SQLite database and the embedded SQLite broker in a temporary data dir (`ctx`, or `make_ctx(**env)` for
other STUDIO_* settings), and `students`, two distill runs with weights. The helpers that put runs into each state are
in tests/app/studio_ctx.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from tests.app.studio_ctx import checkpoints, claim, create, finish, progress
from tests.app.studio_env import close_studio, migrated_template, open_studio, use_data_dir
from tests.services import clear_studio_caches


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return migrated_template(tmp_path_factory.mktemp("template"))


@pytest.fixture
def make_ctx(tmp_path, monkeypatch, template):
    opened = []

    def make(**env):
        use_data_dir(monkeypatch, tmp_path / "data", template, **env)
        opened.append(open_studio())
        return opened[-1]
    yield make
    for ctx in opened:
        close_studio(ctx)


@pytest.fixture
def ctx(make_ctx):
    return make_ctx()


@pytest.fixture
def students(ctx):
    """A succeeded dmd2 run (checkpoints 100, 200, final step 300) and a running 4-step mmd one (50, 150)."""
    done = create(ctx, spec={"teacher": "digits", "method": "dmd2", "student_steps": 1})
    claim(ctx, done)
    checkpoints(ctx, done, 100, 200)
    progress(ctx, done, 300)
    finish(ctx, done)
    live = create(ctx, spec={"teacher": "digits", "method": "mmd", "student_steps": 4})
    claim(ctx, live)
    checkpoints(ctx, live, 50, 150)
    return f"run:{done}", f"run:{live}"


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("STUDIO_DATA_DIR", str(data))
    monkeypatch.delenv("STUDIO_DATABASE_URL", raising=False)
    clear_studio_caches()  # settings and engines are cached per process
    yield data
    clear_studio_caches()


@pytest.fixture
def cli(data_dir):
    def invoke(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result
    return invoke
