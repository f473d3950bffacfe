"""The real services the job tests and the queue benchmark use, and the process-wide caches they must reset."""

from __future__ import annotations

import json
import os
import uuid
from contextlib import suppress

import pytest
import redis
from sqlalchemy import Engine, text

from storage.db import check_connection, make_engine
from storage.settings import get_settings
from workers.celery_app import get_app

# Database 9 for submit/CLI tests; the end-to-end tests use their own (tests/workers/harness.py).
REDIS_URL = os.environ.get("STUDIO_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


def clear_studio_caches() -> None:
    """Settings and the Celery app are built once per process; a test that changes STUDIO_* must rebuild them."""
    if get_app.cache_info().currsize:
        get_app().close()
    get_app.cache_clear()
    get_settings.cache_clear()
    from workers import jobs  # its session factory is built from the settings too (once per process id)

    if jobs._factory_for.cache_info().currsize:
        jobs._factory_for(os.getpid()).kw["bind"].dispose()
    jobs._factory_for.cache_clear()


def connect_redis(url: str = REDIS_URL) -> redis.Redis:
    """A client for the test Redis; a missing server fails the test, never skips it (docs/architecture.md#set-up-and-tests)."""
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"these tests need Redis at {url} (set STUDIO_TEST_REDIS_URL): {exc}", pytrace=False)
    return client


class PostgresServer:
    """Creates throw-away databases on one server; `drop_all()` drops every one it made."""

    def __init__(self, admin: Engine, prefix: str):
        self.admin, self.prefix, self.names = admin, prefix, []

    @classmethod
    def connect(cls, admin_url: str, prefix: str) -> PostgresServer:
        """`admin_url` names a database to connect to while creating ours; raises DatabaseUnavailable if unreachable."""
        admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")  # CREATE DATABASE needs it
        check_connection(admin)
        return cls(admin, prefix)

    def create(self, label: str | None = None) -> str:
        """A new empty database (named `prefix_label`, or `prefix_<random>`); returns its URL."""
        name = f"{self.prefix}_{label or uuid.uuid4().hex[:8]}".replace("-", "_").lower()
        with self.admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        self.names.append(name)
        return self.admin.url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as connection:
            for name in self.names:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


def clean_redis(client: redis.Redis, marker: str) -> None:
    """Delete what queues and workers named with `marker` left on Redis: their lists, bindings (pidbox, events) and
    unacked messages (a killed worker leaves the message it held there)."""
    for key in list(client.scan_iter(match=f"*{marker}*", count=1000)):
        client.delete(key)
    for binding in client.scan_iter(match="_kombu.binding.*"):
        members = [m for m in client.smembers(binding) if marker.encode() in m]
        if members:
            client.srem(binding, *members)
    for tag, raw in client.hgetall("unacked").items():
        with suppress(ValueError, TypeError, IndexError):
            _message, exchange, routing_key = json.loads(raw)
            if marker in exchange or marker in routing_key:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
