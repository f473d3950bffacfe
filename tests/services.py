"""The real services the job tests use, and the process-wide caches they must reset between tests."""

from __future__ import annotations

import os

import pytest
import redis

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


def connect_redis(url: str = REDIS_URL) -> redis.Redis:
    """A client for the test Redis; a missing server fails the test, never skips it (DESIGN.md §7)."""
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"these tests need Redis at {url} (set STUDIO_TEST_REDIS_URL): {exc}", pytrace=False)
    return client
