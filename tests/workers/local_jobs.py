"""Jobs run in this process through workers.jobs.execute (claim, lease, job, terminal status) on a real SQLite or
PostgreSQL database, with no broker: the `jobs_db` fixture (tests/workers/conftest.py) and the helpers below."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from storage import repo
from storage.db import make_engine, make_session_factory, session_scope
from storage.migrate import upgrade
from tests.services import clear_studio_caches
from workers import jobs
from workers.submit import validate_spec


def open_jobs_db(url: str, data_dir, monkeypatch):
    """Point the studio at `url` and `data_dir`, migrate, and make workers.jobs use it; yields the namespace the
    helpers take, then restores torch's thread count and disposes of the engine."""
    monkeypatch.setenv("STUDIO_DATA_DIR", str(data_dir))
    monkeypatch.setenv("STUDIO_DATABASE_URL", url)
    clear_studio_caches()
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    monkeypatch.setattr(jobs, "session_factory", lambda: factory)
    monkeypatch.setattr(jobs, "_listen_for_shutdown", lambda: None)  # leave pytest's signal handlers alone
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one spinning OpenMP thread, not two
    yield SimpleNamespace(factory=factory, data_dir=data_dir)
    torch.set_num_threads(threads)
    engine.dispose()
    clear_studio_caches()


def validate(studio, kind: str, spec: dict) -> dict:
    with session_scope(studio.factory) as s:
        return validate_spec(kind, spec, data_dir=studio.data_dir, session=s)


def job(studio, kind: str, spec: dict) -> int:
    """Validate the spec as Jobs.submit does, write the queued row and run its job here; the run id."""
    with session_scope(studio.factory) as s:
        clean = validate_spec(kind, spec, data_dir=studio.data_dir, session=s)
        run_id = repo.create_run(session=s, kind=kind, spec=clean).id
    status = jobs.execute(run_id, kind)
    with session_scope(studio.factory) as s:
        assert status == "succeeded", repo.get_run(session=s, run_id=run_id).error
    return run_id
