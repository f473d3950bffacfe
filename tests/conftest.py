"""Shared test setup: an offline environment for every test and every subprocess it starts, and throw-away
PostgreSQL databases.

PostgreSQL: uniquely named databases on 127.0.0.1:5432 (user postgres), dropped at the end of the session;
STUDIO_TEST_POSTGRES_URL names another server (a database to connect to while creating ours). A missing server fails
the tests that need it with one clear message; it never skips them (docs/architecture.md#set-up-and-tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from storage.db import DatabaseUnavailable
from tests.services import PostgresServer

OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.fixture(scope="session", autouse=True)
def _offline_env():
    """No test phones home: Gradio analytics off, Hugging Face Hub offline (inherited by subprocesses)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in OFFLINE_ENV.items():
            mp.setenv(key, value)
        yield


ADMIN_URL = os.environ.get("STUDIO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer.connect(ADMIN_URL, prefix=f"studio_test_{os.getpid()}")
    except DatabaseUnavailable as exc:  # a failure, not a skip: CI must notice a missing server
        message = f"these tests need PostgreSQL (set STUDIO_TEST_POSTGRES_URL to use another server): {exc}"
        raise pytest.fail.Exception(message, pytrace=False) from None
    yield server
    server.drop_all()
