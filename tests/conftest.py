"""Shared test setup: an offline environment for every test and every subprocess it starts, and throw-away
PostgreSQL databases.

PostgreSQL: uniquely named databases on 127.0.0.1:5432 (user postgres), dropped at the end of the session;
STUDIO_TEST_POSTGRES_URL names another server (a database to connect to while creating ours). A missing server fails
the tests that need it with one clear message; it never skips them (DESIGN.md §7).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from storage.db import DatabaseUnavailable, check_connection, make_engine

OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.fixture(scope="session", autouse=True)
def _offline_env():
    """No test phones home: Gradio analytics off, Hugging Face Hub offline (inherited by subprocesses)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in OFFLINE_ENV.items():
            mp.setenv(key, value)
        yield


ADMIN_URL = os.environ.get("STUDIO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


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
        message = f"these tests need PostgreSQL (set STUDIO_TEST_POSTGRES_URL to use another server): {exc}"
        raise pytest.fail.Exception(message, pytrace=False) from None
    server = PostgresServer(admin)
    yield server
    server.drop_all()
