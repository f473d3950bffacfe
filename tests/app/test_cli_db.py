"""`distill-studio db upgrade`: migrates the database named by the settings; a bad or unreachable one is one line."""

from __future__ import annotations

import json

import pytest
from alembic.script import ScriptDirectory
from typer.testing import CliRunner

from app.cli import app
from storage.migrate import alembic_config
from storage.settings import get_settings

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("STUDIO_DATABASE_URL", raising=False)
    get_settings.cache_clear()  # settings are read once per process
    yield lambda *args: CliRunner().invoke(app, list(args))
    get_settings.cache_clear()


def test_db_upgrade_creates_the_default_sqlite_database_once(cli, tmp_path):
    first = cli("db", "upgrade", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout) == {"database": f"sqlite:///{tmp_path / 'data' / 'studio.db'}", "before": None,
                                        "after": HEAD}
    assert (tmp_path / "data" / "studio.db").is_file()
    again = cli("db", "upgrade")
    assert (again.exit_code, again.stdout.strip()) == (0, f"sqlite:///{tmp_path / 'data' / 'studio.db'}: {HEAD} -> {HEAD}")


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://root:hunter2@db/studio", "error: STUDIO_DATABASE_URL: unsupported scheme 'mysql'"),
    ("postgresql://postgres:hunter2@127.0.0.1:1/studio",
     "error: database postgresql+psycopg://postgres:***@127.0.0.1:1/studio is unreachable: connection failed:"),
])
def test_db_upgrade_errors_are_one_line(cli, monkeypatch, url, message):
    monkeypatch.setenv("STUDIO_DATABASE_URL", url)
    result = cli("db", "upgrade")
    assert (result.exit_code, result.stdout) == (2, "")
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message) and "hunter2" not in lines[0], result.stderr
