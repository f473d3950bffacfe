"""Fixtures of the end-to-end job tests (the harness is in harness.py): `studio` and `make_studio`."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.services import connect_redis

from .harness import REDIS_URL, Studio
from .local_jobs import open_jobs_db


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = connect_redis(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def make_studio(request, tmp_path, redis_client) -> Iterator[Callable[..., Studio]]:
    """make_studio(database="sqlite"|"postgres", broker="redis"|"embedded", lease_s=6) -> Studio; torn down after."""
    made: list[Studio] = []

    def make(database: str = "sqlite", broker: str = "redis", lease_s: float = 6) -> Studio:
        if database == "postgres":
            url = request.getfixturevalue("postgres").create()
        else:
            url = f"sqlite:///{tmp_path / 'data' / 'studio.db'}"
        studio = Studio(tmp_path=tmp_path, database_url=url, broker_url=REDIS_URL if broker == "redis" else None,
                        redis=redis_client, queue=f"e2e-{uuid.uuid4().hex[:12]}", lease_s=lease_s)
        made.append(studio)
        return studio

    yield make
    for studio in made:
        studio.close()


@pytest.fixture
def studio(make_studio) -> Studio:
    """SQLite database, Redis broker, 6 s leases."""
    return make_studio()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def jobs_db(request, tmp_path, monkeypatch):
    """A migrated database (SQLite, then PostgreSQL) and data dir that workers.jobs.execute runs jobs against in this
    process (tests/workers/local_jobs.py)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    url = f"sqlite:///{data_dir / 'studio.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres").create()
    yield from open_jobs_db(url, data_dir, monkeypatch)
