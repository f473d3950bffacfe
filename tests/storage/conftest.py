"""Every storage test runs twice: on a fresh SQLite file and on a real PostgreSQL database.

PostgreSQL: one uniquely named database per test session on 127.0.0.1:5432 (user postgres), emptied before each
test and dropped at the end; STUDIO_TEST_POSTGRES_URL names another server (a database to connect to while creating
ours). A missing server fails these tests with one clear message; it never skips them (DESIGN.md §7).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from storage.db import DatabaseUnavailable, check_connection, make_engine, make_session_factory
from storage.migrate import upgrade
from storage.models import Base

ADMIN_URL = os.environ.get("STUDIO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class PostgresServer:
    """Creates throw-away databases and drops them all at the end of the session."""

    def __init__(self, admin: Engine):
        self.admin, self.names = admin, []

    def create(self) -> str:
        name = f"studio_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with self.admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        self.names.append(name)
        return self.admin.url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as connection:
            for name in self.names:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    admin = make_engine(ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    try:
        check_connection(admin)
    except DatabaseUnavailable as exc:  # a failure, not a skip: CI must notice a missing server
        message = f"tests/storage need PostgreSQL (set STUDIO_TEST_POSTGRES_URL to use another server): {exc}"
        raise pytest.fail.Exception(message, pytrace=False) from None
    server = PostgresServer(admin)
    yield server
    server.drop_all()


@pytest.fixture(scope="session")
def postgres_engine(postgres: PostgresServer) -> Iterator[Engine]:
    """One migrated database shared by the session; `db` empties it before each test."""
    url = postgres.create()
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def new_database(request, tmp_path) -> Callable[[], str]:
    """Makes databases with no tables; returns their URLs."""
    def sqlite() -> str:
        return f"sqlite:///{tmp_path / 'data' / uuid.uuid4().hex / 'studio.db'}"

    return sqlite if request.param == "sqlite" else request.getfixturevalue("postgres").create


@pytest.fixture(params=BACKENDS)
def db(request, tmp_path) -> Iterator[sessionmaker[Session]]:
    """A session factory on a migrated, empty database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'studio.db'}"
        upgrade(url)
        engine = make_engine(url)
    else:
        engine = request.getfixturevalue("postgres_engine")
        tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield make_session_factory(engine)
    if request.param == "sqlite":
        engine.dispose()
