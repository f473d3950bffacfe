"""Every storage test runs twice: on a fresh SQLite file and on a real PostgreSQL database.

PostgreSQL: one uniquely named database per test session on 127.0.0.1:5432 (user postgres), emptied before each
test and dropped at the end; STUDIO_TEST_POSTGRES_URL names another server (the `postgres` fixture in
tests/conftest.py). A missing server fails these tests with one clear message; it never skips them
(docs/architecture.md#set-up-and-tests).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade
from storage.models import Base

if TYPE_CHECKING:
    from tests.services import PostgresServer

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


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
