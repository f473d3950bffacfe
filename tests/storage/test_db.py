"""Engines: SQLite pragmas, the psycopg 3 mapping, UTC times, and one clear line when the database is unreachable."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.exc import StatementError

from storage.db import DatabaseUnavailable, check_connection, make_engine, server_now, session_scope
from storage.repo import create_run, get_run


def test_sqlite_gets_wal_foreign_keys_and_a_busy_timeout(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'new' / 'folder' / 'studio.db'}")  # the folder is created
    with engine.connect() as connection:
        pragmas = [connection.execute(text(f"PRAGMA {name}")).scalar() for name in ("journal_mode", "foreign_keys",
                                                                                   "busy_timeout")]
    engine.dispose()
    assert pragmas == ["wal", 1, 30_000]


def test_postgresql_urls_use_psycopg_3():
    engine = make_engine("postgresql://postgres@127.0.0.1/postgres")
    assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")
    assert engine.url.drivername == "postgresql+psycopg"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: only the connect timeout ends the wait."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


@pytest.fixture(params=["refused", "silent", pytest.param("missing database", marks=pytest.mark.postgres),
                        "sqlite folder is a file", "sqlite file is a folder"])
def unreachable_url(request, tmp_path) -> str:
    if request.param == "refused":
        return "postgresql://postgres:hunter2@127.0.0.1:1/studio"
    if request.param == "silent":
        return f"postgresql://postgres:hunter2@127.0.0.1:{request.getfixturevalue('silent_port')}/studio"
    if request.param == "missing database":  # the server answers, the database does not exist
        admin_url = request.getfixturevalue("postgres").admin.url
        return admin_url.set(database="studio_no_such_database", password="hunter2").render_as_string(hide_password=False)
    if request.param == "sqlite folder is a file":
        (tmp_path / "a-file").write_text("")
        return f"sqlite:///{tmp_path / 'a-file' / 'studio.db'}"
    (tmp_path / "a-folder.db").mkdir()
    return f"sqlite:///{tmp_path / 'a-folder.db'}"


def test_an_unreachable_database_is_one_fast_clear_line(unreachable_url):
    start = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as info:
        check_connection(make_engine(unreachable_url))
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert elapsed < 5, (elapsed, message)
    shown = unreachable_url.replace("hunter2", "***").replace("postgresql:", "postgresql+psycopg:")
    assert message.startswith(f"database {shown} is unreachable: ")
    assert "\n" not in message and "hunter2" not in message and len(message) < 400, message


def test_times_are_aware_utc_and_naive_times_are_refused(db):
    with session_scope(db) as s:
        now = server_now(s)
        assert now.tzinfo is UTC and abs(now - datetime.now(UTC)) < timedelta(minutes=5)
        run = create_run(session=s, kind="distill", spec={})
        run.started_at = datetime(2026, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    with session_scope(db) as s:
        started = get_run(session=s, run_id=run.id).started_at
    assert (started, started.tzinfo) == (datetime(2026, 1, 1, 12, 0, tzinfo=UTC), UTC)
    with pytest.raises(StatementError, match="naive datetime"), session_scope(db) as s:
        get_run(session=s, run_id=run.id).finished_at = datetime(2026, 1, 1)


def test_session_scope_rolls_back_on_error(db):
    with pytest.raises(RuntimeError), session_scope(db) as s:
        create_run(session=s, kind="distill", spec={})
        raise RuntimeError("boom")
    with session_scope(db) as s:
        assert get_run(session=s, run_id=1) is None
