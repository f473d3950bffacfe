"""Queueing jobs (workers/submit.py): every bad spec is refused naming its field before any row or message exists;
a good one is one queued row and one message on a real Redis; a broker that is down leaves the row for the reaper.

Redis: database 9 of 127.0.0.1:6379 (STUDIO_TEST_REDIS_URL names another), one uniquely named queue per test,
deleted afterwards. The database is a fresh SQLite file per test.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import func, select

from core.specs import BUILTIN_TEACHERS, SHAPES_TRAIN, SHAPES_VAE_TRAIN
from storage import repo
from storage.db import session_scope
from storage.migrate import upgrade
from storage.models import Run
from storage.settings import get_settings
from tests.services import REDIS_URL, clear_studio_caches, connect_redis
from workers.submit import BrokerUnavailable, Jobs, validate_spec

DEAD_BROKER = "redis://127.0.0.1:1/0"
DISTILL = {"teacher": "toy2d-ring", "method": "dmd2", "preset": "toy2d", "iterations": 300}


@pytest.fixture
def broker() -> redis.Redis:
    client = connect_redis()
    yield client
    client.close()


@pytest.fixture
def env(tmp_path, monkeypatch, broker):
    """Settings for a fresh SQLite database in tmp_path and a unique queue on Redis; yields the queue name."""
    queue = f"test-submit-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("STUDIO_DATABASE_URL", raising=False)
    monkeypatch.setenv("STUDIO_BROKER_URL", REDIS_URL)
    monkeypatch.setenv("STUDIO_QUEUE", queue)
    clear_studio_caches()
    upgrade(get_settings().database_url)
    yield queue
    broker.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    clear_studio_caches()


@pytest.fixture
def jobs(env) -> Jobs:
    return Jobs()


def _messages(broker: redis.Redis, queue: str) -> list[tuple[str, list]]:
    """(task name, args) of every message waiting in the queue, oldest first."""
    found = []
    for raw in reversed(broker.lrange(queue, 0, -1)):  # kombu LPUSHes and BRPOPs: the tail is the oldest
        message = json.loads(raw)
        assert message["properties"]["body_encoding"] == "base64"
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["task"], args))
    return found


def _runs(jobs: Jobs) -> list[Run]:
    with session_scope(jobs.factory) as s:
        return list(reversed(repo.list_runs(session=s)))


def _count(jobs: Jobs) -> int:
    with session_scope(jobs.factory) as s:
        return s.scalar(select(func.count()).select_from(Run))


def _succeeded_distill(jobs: Jobs, teacher: str = "digits", status: str = "succeeded") -> int:
    """A distill run as a worker would leave it, written straight to the database."""
    spec = validate_spec("distill", {"teacher": teacher, "method": "dmd2"}, data_dir=jobs.settings.data_dir)
    with session_scope(jobs.factory) as s:
        run_id = repo.create_run(session=s, kind="distill", spec=spec, total=spec["iterations"]).id
        if status != "queued":
            assert repo.claim_run(session=s, run_id=run_id, worker="w", lease_s=60)
            if status != "running":
                assert repo.finish_run(session=s, run_id=run_id, worker="w", status=status)
    return run_id


# -- bad specs: ValueError naming the field, and nothing written -------------------------------------------

BAD = [
    ("distill", {**DISTILL, "teacher": "nope"}, r"^teacher: unknown name 'nope' \(known: .*toy2d-ring"),
    ("distill", {**DISTILL, "teacher": "toy2d-ring-gmm"}, r"^teacher: 'toy2d-ring-gmm' is analytic"),
    ("distill", {**DISTILL, "method": "sdxl"}, r"^method: unknown method 'sdxl' \(known: mmd, "),
    ("distill", {**DISTILL, "preset": "toy2d+nope"}, r"^preset: unknown preset 'nope' for dmd2"),
    ("distill", {**DISTILL, "sets": ["bogus=1"]}, r"^set: unknown key 'bogus' for dmd2"),
    ("distill", {**DISTILL, "sets": ["ttur_ratio=0"]}, r"^dmd2: ttur_ratio must be an integer >= 1, got 0"),
    ("distill", {**DISTILL, "sets": ["ttur_ratio"]}, r"^set: 'ttur_ratio' is not KEY=VALUE"),
    ("distill", {**DISTILL, "iterations": -5}, r"^iterations: Input should be greater than or equal to 1$"),
    ("distill", {**DISTILL, "iterations": 10, "checkpoint_every": 11},
     r"^checkpoint_every: must be at most iterations \(10\), got 11$"),
    ("distill", {**DISTILL, "batch_size": 10, "grad_accum": 4},
     r"^grad_accum: must divide the batch \(10\) into equal micro-batches, got 4$"),
    ("distill", {**DISTILL, "grad_accum": 3}, r"^grad_accum: must divide the batch \(512\) into equal micro-batches"),
    ("distill", {**DISTILL, "sets": ["precision=fp16"]}, r"^dmd2: precision fp16 is not supported"),
    ("distill", {**DISTILL, "colour": "red"}, r"^colour: Extra inputs are not permitted$"),
    ("distill", {"method": "dmd2"}, r"^teacher: Field required$"),
    ("teacher", {"name": "toy2d-ring-gmm"}, r"^name: 'toy2d-ring-gmm' is not a trainable built-in teacher"),
    ("teacher", {"name": "nope"}, r"^name: 'nope' is not a trainable built-in teacher \(trainable: toy2d-ring, "),
    ("teacher", {"name": "digits", "seed": -1}, r"^seed: Input should be greater than or equal to 0$"),
    ("sample", {"model": "digits", "seeds": [0]}, r"^model: 'digits' is not teacher:NAME or run:ID$"),
    ("sample", {"model": "student:1", "seeds": [0]}, r"^model: 'student:1' is not teacher:NAME or run:ID$"),
    ("sample", {"model": "teacher:nope", "seeds": [0]}, r"^model: unknown name 'nope'"),
    ("sample", {"model": "teacher:digits", "seeds": [0], "class_id": 10},
     r"^class_id: must be in \[0, 9\] for 'digits', got 10$"),
    ("sample", {"model": "teacher:toy2d-ring", "seeds": [0], "class_id": 0},
     r"^class_id: must be left out \(unconditional\) for 'toy2d-ring', got 0$"),
    ("sample", {"model": "teacher:digits", "seeds": []}, r"^seeds: .*at least 1 item"),
    ("sample", {"model": "teacher:digits", "seeds": [3, -1]}, r"^seeds\.1: Input should be greater than or equal to 0$"),
    ("sample", {"model": "teacher:digits", "seeds": [0], "sampler": "euler"}, r"^sampler: Input should be 'ddim' or"),
    ("sample", {"model": "teacher:digits", "seeds": [0], "guidance": 21}, r"^guidance: .*less than or equal to 20"),
    ("sample", {"model": "run:1", "seeds": [0]}, r"^model: run 1 is not a distill run$"),
    ("evaluate", {"models": ["teacher:digits"], "metrics": ["fid", "bogus"]}, r"^metrics: unknown metric 'bogus' \(known: "),
    ("evaluate", {"models": ["teacher:digits"], "metrics": ["fid"], "n": 1798}, r"^n: 1798 is larger than the digits reference"),
    ("export", {"model": "teacher:digits"}, r"^model: 'teacher:digits' is a teacher; export takes a student: run:ID$"),
    ("bake", {"model": "teacher:digits"}, r"^kind: must be one of teacher, distill, sample, evaluate, export, got 'bake'$"),
]


@pytest.mark.parametrize(("kind", "spec", "message"), BAD, ids=[f"{k}-{m.split(':')[0].strip('^')}-{i}"
                                                                 for i, (k, _, m) in enumerate(BAD)])
def test_a_bad_spec_names_its_field_and_writes_nothing(jobs, broker, env, kind, spec, message):
    with pytest.raises(ValueError, match=message):
        jobs.submit(kind, spec)
    assert _count(jobs) == 0
    assert broker.llen(env) == 0


def test_validate_spec_without_a_database_refuses_run_references(tmp_path):
    with pytest.raises(ValueError, match="^model: run references need the database$"):
        validate_spec("sample", {"model": "run:3", "seeds": [0]}, data_dir=tmp_path)
    with pytest.raises(ValueError, match="^spec: must be a JSON object, got list$"):
        validate_spec("distill", ["teacher"], data_dir=tmp_path)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", ["queued", "running", "failed", "cancelled"])
def test_sampling_a_run_that_has_not_succeeded_is_refused(jobs, broker, env, status):
    run_id = _succeeded_distill(jobs, status=status)
    with pytest.raises(ValueError, match=rf"^model: run {run_id} has not succeeded \(status {status}\)$"):
        jobs.submit("sample", {"model": f"run:{run_id}", "seeds": [0]})
    assert _count(jobs) == 1 and broker.llen(env) == 0


def test_a_student_is_sampled_unguided_within_its_teachers_classes(jobs, broker, env):
    run_id = _succeeded_distill(jobs, teacher="digits")
    with pytest.raises(ValueError, match=r"^guidance: students are sampled unguided"):
        jobs.submit("sample", {"model": f"run:{run_id}", "seeds": [0], "guidance": 2.0})
    with pytest.raises(ValueError, match=r"^class_id: must be in \[0, 9\] for 'digits', got 12$"):
        jobs.submit("sample", {"model": f"run:{run_id}", "seeds": [0], "class_id": 12})
    sample_of_sample = jobs.submit("sample", {"model": f"run:{run_id}", "seeds": [0, 1], "class_id": 9})
    assert _count(jobs) == 2
    with pytest.raises(ValueError, match=rf"^model: run {sample_of_sample} is not a distill run$"):
        jobs.submit("sample", {"model": f"run:{sample_of_sample}", "seeds": [0]})
    assert _count(jobs) == 2
    assert _messages(broker, env) == [("studio.sample", [sample_of_sample])]


def test_a_checkpoint_must_be_a_saved_step_of_a_distill_run(jobs, broker, env):
    run_id = _succeeded_distill(jobs, status="running")
    with session_scope(jobs.factory) as s:
        repo.record_checkpoint(session=s, run_id=run_id, step=500, path=f"runs/{run_id}/checkpoints/step-0000500.safetensors")
    for spec, message in [
        ({"model": "teacher:digits", "checkpoint": 500}, r"^checkpoint: only run:ID models have checkpoints"),
        ({"model": f"run:{run_id}", "checkpoint": 400}, rf"^checkpoint: run {run_id} has no checkpoint at step 400; "
                                                        r"saved: 500$"),
        ({"model": f"run:{run_id}", "checkpoint": 500}, rf"^checkpoint: run {run_id} has no snapshot at step 500 "),
    ]:
        with pytest.raises(ValueError, match=message):
            jobs.submit("sample", {"seeds": [0], **spec})
    assert _count(jobs) == 1 and broker.llen(env) == 0
    # A running run's checkpoint with its snapshot on disk (the file is looked for, not loaded).
    snapshot = jobs.settings.data_dir / "runs" / str(run_id) / "snapshots" / "step-0000500.safetensors"
    snapshot.parent.mkdir(parents=True)
    snapshot.write_bytes(b"")
    sample = jobs.submit("sample", {"model": f"run:{run_id}", "seeds": [0], "checkpoint": 500})
    assert _runs(jobs)[-1].spec["checkpoint"] == 500
    assert _messages(broker, env) == [("studio.sample", [sample])]


# -- a good submit: one queued row, one message ---------------------------------------------------------------

def test_submit_writes_one_queued_row_and_sends_one_message(jobs, broker, env):
    before = datetime.now(UTC) - timedelta(seconds=5)
    run_id = jobs.submit("distill", {**DISTILL, "sets": ["ttur_ratio=3"], "checkpoint_every": 100})
    [run] = _runs(jobs)
    assert (run.id, run.kind, run.status, run.total, run.step, run.attempts) == (run_id, "distill", "queued", 300, 0, 0)
    assert run.spec == {"teacher": "toy2d-ring", "method": "dmd2", "preset": "toy2d", "student_steps": None,
                        "sets": ["ttur_ratio=3"], "iterations": 300, "batch_size": None, "grad_accum": 1, "seed": 0,
                        "checkpoint_every": 100, "prompts": None, "data": None, "init": None}
    assert run.out_dir == f"runs/{run_id}"
    assert run.dispatched_at is not None and before < run.dispatched_at < datetime.now(UTC) + timedelta(seconds=5)
    assert broker.llen(env) == 1
    assert _messages(broker, env) == [("studio.distill", [run_id])]


def test_each_kind_has_its_task_and_total(jobs, broker, env):
    teacher = jobs.submit("teacher", {"name": "digits"})
    teacher_short = jobs.submit("teacher", {"name": "toy2d-grid", "iterations": 77, "seed": 3})
    sample = jobs.submit("sample", {"model": "teacher:digits", "seeds": [5, 6, 7], "class_id": 3, "guidance": 2})
    # shapes trains in two stages (VAE, then text encoder + UNet): its progress runs over both.
    shapes = jobs.submit("teacher", {"name": "shapes"})
    shapes_short = jobs.submit("teacher", {"name": "shapes", "iterations": 5})
    runs = _runs(jobs)
    assert [(r.id, r.kind, r.total) for r in runs] == [
        (teacher, "teacher", BUILTIN_TEACHERS["digits"].train.iterations), (teacher_short, "teacher", 77),
        (sample, "sample", 3), (shapes, "teacher", SHAPES_VAE_TRAIN.iterations + SHAPES_TRAIN.iterations),
        (shapes_short, "teacher", 10)]
    assert runs[0].spec == {"name": "digits", "iterations": None, "seed": None}
    assert runs[2].spec == {"model": "teacher:digits", "seeds": [5, 6, 7], "steps": None, "class_id": 3,
                            "guidance": 2.0, "sampler": "ddim", "eta": 0.0, "checkpoint": None, "prompts": []}
    assert _messages(broker, env) == [("studio.train_teacher", [teacher]), ("studio.train_teacher", [teacher_short]),
                                      ("studio.sample", [sample]), ("studio.train_teacher", [shapes]),
                                      ("studio.train_teacher", [shapes_short])]


# -- the broker is down ---------------------------------------------------------------------------------------

def test_an_unreachable_broker_leaves_the_run_queued_for_the_reaper(jobs, broker, env, monkeypatch):
    monkeypatch.setenv("STUDIO_BROKER_URL", DEAD_BROKER)
    clear_studio_caches()
    start = time.monotonic()
    with pytest.raises(BrokerUnavailable) as raised:
        Jobs().submit("distill", DISTILL)
    assert time.monotonic() - start < 30  # a few quick retries, not Celery's endless ones
    message = str(raised.value)
    assert message.startswith("run 1 is queued, but the broker is unreachable (") and "\n" not in message
    assert message.endswith("a worker will send it when the broker is back")
    [run] = _runs(jobs)
    assert (run.id, run.status, run.dispatched_at) == (1, "queued", None)
    assert broker.llen(env) == 0
    with session_scope(jobs.factory) as s:  # what the reaper will find once the grace period is over
        late = run.created_at + timedelta(minutes=5)
        assert repo.take_undispatched(session=s, older_than_s=60, now=late) == [1]

    monkeypatch.setenv("STUDIO_BROKER_URL", REDIS_URL)  # the broker is back: the reaper's send
    clear_studio_caches()
    sent = datetime.now(UTC)
    Jobs().send(1, "distill")
    assert _messages(broker, env) == [("studio.distill", [1])]
    assert abs(_runs(jobs)[0].dispatched_at - sent) < timedelta(seconds=5)  # the real send time, not the reaper's mark


# -- cancel and resume ----------------------------------------------------------------------------------------

def test_cancel_a_queued_run_then_resume_it(jobs, broker, env):
    run_id = jobs.submit("distill", DISTILL)
    assert jobs.cancel(run_id) == "cancelled"
    [run] = _runs(jobs)
    assert (run.status, run.finished_at is not None, run.cancel_requested) == ("cancelled", True, False)
    with pytest.raises(ValueError, match=rf"^run: {run_id} is cancelled; only queued or running runs can be cancelled$"):
        jobs.cancel(run_id)
    first_sent = run.dispatched_at

    jobs.resume(run_id)
    [run] = _runs(jobs)
    assert (run.status, run.finished_at, run.error) == ("queued", None, None)
    assert run.dispatched_at > first_sent
    assert _messages(broker, env) == [("studio.distill", [run_id]), ("studio.distill", [run_id])]  # re-sent
    with pytest.raises(ValueError, match=rf"^run: {run_id} is queued; only cancelled or failed runs can be resumed$"):
        jobs.resume(run_id)
    assert broker.llen(env) == 2


def test_cancel_a_running_run_asks_its_worker(jobs):
    run_id = _succeeded_distill(jobs, status="running")
    assert jobs.cancel(run_id) == "running"
    [run] = _runs(jobs)
    assert (run.status, run.cancel_requested) == ("running", True)


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_a_finished_run_cannot_be_cancelled(jobs, broker, env, status):
    run_id = _succeeded_distill(jobs, status=status)
    with pytest.raises(ValueError, match=rf"^run: {run_id} is {status}; only queued or running runs can be cancelled$"):
        jobs.cancel(run_id)
    assert _runs(jobs)[0].status == status


def test_resume_a_failed_run_but_not_a_succeeded_one(jobs, broker, env):
    failed, succeeded = _succeeded_distill(jobs, status="failed"), _succeeded_distill(jobs)
    jobs.resume(failed)
    with pytest.raises(ValueError, match=rf"^run: {succeeded} is succeeded; only cancelled or failed runs can be resumed$"):
        jobs.resume(succeeded)
    assert [r.status for r in _runs(jobs)] == ["queued", "succeeded"]
    assert _messages(broker, env) == [("studio.distill", [failed])]


def test_unknown_run_ids(jobs, broker, env):
    for action in (jobs.cancel, jobs.resume):
        with pytest.raises(ValueError, match="^run: no run with id 999$"):
            action(999)
    assert broker.llen(env) == 0


def test_job_spec_fields_carry_their_help_like_the_method_knobs(tmp_path):
    """Job specs declare their fields with core.knobs.knob, as the method configs do: every field says why and where
    its default comes from, and the bounds the help shows are the ones validation enforces."""
    from core.knobs import SOURCES, knob_rows
    from workers.submit import SPECS, DistillSpec

    for kind, cls in SPECS.items():
        for row in knob_rows(cls):
            assert row["why"] and row["source"] in SOURCES, (kind, row)
    iterations = next(r for r in knob_rows(DistillSpec) if r["name"] == "iterations")
    assert iterations["accepts"] == "an integer >= 1" and iterations["default"] == 2000
    with pytest.raises(ValueError, match=r"^iterations: Input should be greater than or equal to 1$"):
        validate_spec("distill", {"teacher": "digits", "method": "dmd2", "iterations": 0}, data_dir=tmp_path)
