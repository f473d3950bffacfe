"""Engine, sessions and the database clock.

SQLite is the embedded default: WAL lets the UI read while a worker writes, the busy timeout makes a second
writer wait instead of failing with "database is locked", and foreign keys are off in SQLite unless asked for.
Postgres is reached through psycopg 3 with a short connect timeout, so an unreachable server fails start-up fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from storage.urls import database_url, display_url

SQLITE_BUSY_TIMEOUT_MS = 30_000  # a writer waits this long for another's commit (checkpoints can be slow to record)
CONNECT_TIMEOUT_S = 3            # Postgres: fail start-up within seconds, not the OS's minutes-long TCP timeout


class DatabaseUnavailable(RuntimeError):
    """One line naming the database (password masked) and why it cannot be reached."""


def make_engine(url: str | URL) -> Engine:
    """An engine for a SQLite or Postgres URL (`postgresql://` is mapped to psycopg 3)."""
    url = database_url(url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            _make_parent(url)
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": CONNECT_TIMEOUT_S}
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True)  # pre-ping survives a server restart


def _make_parent(url: URL) -> None:
    """SQLite creates the file but not its folder; the default lives in a data dir that may not exist yet."""
    folder = Path(url.database).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = f"cannot create the folder {folder}: {exc.strerror}"
        raise DatabaseUnavailable(f"database {display_url(url)} is unreachable: {reason}") from None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")  # first: switching to WAL may wait for a lock
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def check_connection(engine: Engine) -> None:
    """Connect once, so a wrong URL or a stopped server is one clear line at start-up, not a traceback later."""
    try:
        with engine.connect() as connection:
            connection.execute(select(1))
    except DBAPIError as exc:
        reason = " ".join(str(exc.orig).split())  # drivers spread their messages over several lines
        raise DatabaseUnavailable(f"database {display_url(engine.url)} is unreachable: {reason}") from None


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (the UI shows rows after the session is closed)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error, always close. Repository functions never commit."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def server_now(session: Session) -> datetime:
    """The database's clock in UTC, so leases written by workers on different machines compare fairly.

    SQLite lives on this machine, so its clock is ours."""
    if session.get_bind().dialect.name == "sqlite":
        return datetime.now(UTC)
    return session.execute(select(func.clock_timestamp())).scalar_one().astimezone(UTC)  # now() is the transaction's start
