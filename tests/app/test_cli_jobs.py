"""The job commands: `distill --submit`, `runs list|show|cancel|resume`, and `worker`'s start-up errors.

Through typer's CliRunner on a fresh SQLite data dir and a real Redis (database 9 of 127.0.0.1:6379, or
STUDIO_TEST_REDIS_URL), one unique queue per test. `worker` is only run on its failure paths: a reachable database
would start Celery in the test process.
"""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from app.cli import app
from storage import repo
from storage.db import make_engine, make_session_factory, session_scope
from storage.settings import get_settings
from tests.services import REDIS_URL, clear_studio_caches, connect_redis

SUBMIT = ["distill", "--submit", "--teacher", "toy2d-ring", "--method", "dmd2", "--preset", "toy2d", "--iterations", "50"]


@pytest.fixture
def queue(tmp_path, monkeypatch):
    client = connect_redis()
    name = f"test-cli-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("STUDIO_DATABASE_URL", raising=False)
    monkeypatch.setenv("STUDIO_BROKER_URL", REDIS_URL)
    monkeypatch.setenv("STUDIO_QUEUE", name)
    clear_studio_caches()
    yield lambda: client.llen(name)
    client.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
    client.close()
    clear_studio_caches()


@pytest.fixture
def cli(queue):
    def invoke(*args: str):
        result = CliRunner().invoke(app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a traceback is a bug: show it
        return result
    return invoke


@pytest.fixture
def db(cli):
    """The session factory of the studio database (migrated by `db upgrade`, as a user would)."""
    assert cli("db", "upgrade").exit_code == 0
    engine = make_engine(get_settings().database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _one_line_error(result, exit_code: int = 2) -> str:
    assert (result.exit_code, result.stdout) == (exit_code, ""), result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _statuses(db) -> list[tuple[int, str]]:
    with session_scope(db) as s:
        return [(r.id, r.status) for r in reversed(repo.list_runs(session=s))]


def _running(db, run_id: int) -> None:
    with session_scope(db) as s:
        assert repo.claim_run(session=s, run_id=run_id, worker="host:1", lease_s=600)


# -- distill --submit -----------------------------------------------------------------------------------------

def test_submit_prints_the_queued_run(cli, db, queue):
    result = cli(*SUBMIT, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"id": 1, "kind": "distill", "status": "queued"}
    plain = cli(*SUBMIT, "--set", "ttur_ratio=2", "--checkpoint-every", "10")
    assert (plain.exit_code, plain.stdout) == (0, "2\n")
    assert _statuses(db) == [(1, "queued"), (2, "queued")]
    assert queue() == 2
    with session_scope(db) as s:
        run = repo.get_run(session=s, run_id=2)
        assert (run.total, run.spec["sets"], run.spec["checkpoint_every"], run.spec["preset"]) == \
            (50, ["ttur_ratio=2"], 10, "toy2d")


def test_submit_on_a_data_dir_never_migrated(cli, queue):
    result = cli(*SUBMIT, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id"] == 1 and queue() == 1
    listed = cli("runs", "list", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [1]


def test_submit_refuses_out(cli, db, queue, tmp_path):
    line = _one_line_error(cli(*SUBMIT, "--out", str(tmp_path / "student")))
    assert line == "error: out: a submitted run writes to DATA_DIR/runs/ID; leave --out out"
    assert _statuses(db) == [] and queue() == 0
    assert not (tmp_path / "student").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--teacher", "nope"], "error: teacher: unknown name 'nope' (known: "),
    (["--teacher", "toy2d-ring-gmm"], "error: teacher: 'toy2d-ring-gmm' is analytic"),
    (["--method", "sdxl"], "error: method: unknown method 'sdxl'"),
    (["--set", "bogus=1"], "error: set: unknown key 'bogus' for dmd2"),
    (["--set", "ttur_ratio=0"], "error: dmd2: ttur_ratio must be an integer >= 1, got 0"),
    (["--checkpoint-every", "51"], "error: checkpoint_every: must be at most iterations (50), got 51"),
])
def test_a_bad_spec_is_one_line_and_no_row(cli, db, queue, args, message):
    line = _one_line_error(cli(*SUBMIT, *args))
    assert line.startswith(message), line
    assert _statuses(db) == [] and queue() == 0


def test_submit_with_the_broker_down_says_the_run_is_queued(cli, db, queue, monkeypatch):
    monkeypatch.setenv("STUDIO_BROKER_URL", "redis://127.0.0.1:1/0")
    clear_studio_caches()
    line = _one_line_error(cli(*SUBMIT, "--json"))
    assert line.startswith("error: run 1 is queued, but the broker is unreachable (")
    assert line.endswith("a worker will send it when the broker is back")
    assert _statuses(db) == [(1, "queued")]


# -- runs list / show ---------------------------------------------------------------------------------------------

def test_runs_list(cli, db):
    empty = cli("runs", "list")
    assert (empty.exit_code, empty.stdout) == (0, "no runs\n")
    assert json.loads(cli("runs", "list", "--json").stdout) == []
    for _ in range(3):
        assert cli(*SUBMIT).exit_code == 0
    _running(db, 2)

    rows = json.loads(cli("runs", "list", "--json").stdout)
    assert [(r["id"], r["kind"], r["status"], r["total"], r["worker"]) for r in rows] == [
        (3, "distill", "queued", 50, None), (2, "distill", "running", 50, "host:1"), (1, "distill", "queued", 50, None)]
    assert rows[0]["spec"]["teacher"] == "toy2d-ring" and rows[0]["out_dir"] == "runs/3"
    assert "metrics" not in rows[0]
    assert [r["id"] for r in json.loads(cli("runs", "list", "--json", "--status", "running").stdout)] == [2]
    assert [r["id"] for r in json.loads(cli("runs", "list", "--json", "--limit", "2").stdout)] == [3, 2]

    text = cli("runs", "list").stdout.splitlines()
    assert len(text) == 3
    assert text[1].split() == ["2", "running", "0/50", "dmd2", "toy2d-ring"]
    assert _one_line_error(cli("runs", "list", "--status", "done")).startswith("error: status: must be one of ")


def test_runs_show(cli, db):
    assert cli(*SUBMIT).exit_code == 0
    _running(db, 1)
    with session_scope(db) as s:
        repo.record_metrics(session=s, run_id=1, step=10, values={"loss/student": 0.5, "loss/fake": 2.0})
        repo.record_metrics(session=s, run_id=1, step=20, values={"loss/student": 0.25})
        assert repo.heartbeat(session=s, run_id=1, worker="host:1", lease_s=600, step=20)

    result = cli("runs", "show", "1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["metrics"] == {"loss/student": 0.25, "loss/fake": 2.0}
    assert {k: data[k] for k in ("id", "kind", "status", "step", "total", "progress", "attempts", "worker",
                                 "cancel_requested", "error", "finished_at")} == {
        "id": 1, "kind": "distill", "status": "running", "step": 20, "total": 50, "progress": 0.4, "attempts": 1,
        "worker": "host:1", "cancel_requested": False, "error": None, "finished_at": None}
    assert data["spec"]["iterations"] == 50 and data["started_at"] and data["created_at"]

    text = cli("runs", "show", "1").stdout.splitlines()
    assert text[0].split() == ["1", "running", "20/50", "dmd2", "toy2d-ring"]
    assert "  worker: host:1" in text and "  loss/student = 0.25" in text and "  loss/fake = 2" in text


def test_runs_show_an_unknown_id(cli, db):
    assert _one_line_error(cli("runs", "show", "999")) == "error: run: no run with id 999"
    assert _one_line_error(cli("runs", "show", "999", "--json")) == "error: run: no run with id 999"


# -- runs cancel / resume -------------------------------------------------------------------------------------------

def test_cancel_and_resume(cli, db, queue):
    for _ in range(2):
        assert cli(*SUBMIT).exit_code == 0
    _running(db, 2)
    assert queue() == 2

    cancelled = cli("runs", "cancel", "1")
    assert (cancelled.exit_code, cancelled.stdout) == (0, "run 1: cancelled\n")
    asked = cli("runs", "cancel", "2", "--json")
    assert asked.exit_code == 0 and json.loads(asked.stdout) == {"id": 2, "status": "running", "cancel_requested": True}
    assert cli("runs", "cancel", "2").stdout == "run 2: cancel requested; it stops at its next update\n"
    assert _statuses(db) == [(1, "cancelled"), (2, "running")]
    assert _one_line_error(cli("runs", "cancel", "1")) == \
        "error: run: 1 is cancelled; only queued or running runs can be cancelled"

    resumed = cli("runs", "resume", "1")
    assert (resumed.exit_code, resumed.stdout) == (0, "run 1: queued\n")
    assert _statuses(db) == [(1, "queued"), (2, "running")]
    assert queue() == 3  # re-sent
    assert json.loads(cli("runs", "show", "1", "--json").stdout)["status"] == "queued"
    assert _one_line_error(cli("runs", "resume", "1")) == \
        "error: run: 1 is queued; only cancelled or failed runs can be resumed"
    assert _one_line_error(cli("runs", "resume", "2", "--json")) == \
        "error: run: 2 is running; only cancelled or failed runs can be resumed"
    assert _one_line_error(cli("runs", "cancel", "7")) == "error: run: no run with id 7"
    assert queue() == 3


def test_resume_json(cli, db, queue):
    assert cli(*SUBMIT).exit_code == 0
    assert cli("runs", "cancel", "1").exit_code == 0
    result = cli("runs", "resume", "1", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == {"id": 1, "status": "queued"}
    assert queue() == 2


# -- worker ---------------------------------------------------------------------------------------------------

def test_worker_with_an_unreachable_database_is_one_line(cli, monkeypatch):
    monkeypatch.setenv("STUDIO_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/x")
    get_settings.cache_clear()
    line = _one_line_error(cli("worker", "--loglevel", "warning"))
    assert line.startswith("error: database postgresql+psycopg://postgres@127.0.0.1:1/x is unreachable: "), line


def test_worker_refuses_a_bad_loglevel(cli):
    assert _one_line_error(cli("worker", "--loglevel", "loud")) == \
        "error: loglevel: must be debug, info, warning or error, got 'loud'"


def test_commands_with_an_unreachable_database_are_one_line(cli, monkeypatch):
    monkeypatch.setenv("STUDIO_DATABASE_URL", "postgresql://postgres:hunter2@127.0.0.1:1/x")
    get_settings.cache_clear()
    for args in (SUBMIT, ["runs", "list"], ["runs", "show", "1"], ["runs", "cancel", "1"], ["runs", "resume", "1"]):
        line = _one_line_error(cli(*args))
        assert line.startswith("error: database postgresql+psycopg://postgres:***@127.0.0.1:1/x is unreachable"), line
        assert "hunter2" not in line
