"""The Runs tab's handlers as plain functions (docs/study.md#handlers-first): the New-run form, and each run's
status, table row, log, previews and detail, cancel and resume, against a real migrated SQLite database and the
embedded SQLite broker in a temporary data dir. Runs are put into each state through storage.repo, as workers do."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.studio import runs
from app.studio.context import SUBMITS_PER_MINUTE
from app.studio.files import served_dir
from storage import repo
from storage.db import session_scope
from tests.app.studio_ctx import T0, all_runs, broker_messages, claim, create, finish, get, progress
from tests.app.studio_env import write_png

# -- Runs: the New-run form ----------------------------------------------------------------------------------

GOOD = {"teacher": "toy2d-ring", "method": "dmd2", "preset": "toy2d", "student_steps": 1, "iterations": 50, "seed": 7}


@pytest.mark.parametrize("changes, knob_values, field", [
    ({"iterations": 0}, {}, "iterations"),
    ({"iterations": None}, {}, "iterations"),
    ({"iterations": 12.5}, {}, "iterations"),
    ({"method": "emd", "student_steps": 4}, {}, "student_steps"),
    ({"student_steps": 0}, {}, "student_steps"),
    ({"seed": -1}, {}, "seed"),
    ({"preset": "no-such-preset"}, {}, "preset"),
    ({"method": "no-such-method"}, {}, "method"),
    ({"teacher": "no-such-teacher"}, {}, "teacher"),
    ({"teacher": "toy2d-ring-gmm"}, {}, "teacher"),  # analytic: nothing to distil
    ({}, {"ttur_ratio": 0}, "ttur_ratio"),
    ({}, {"lr_gen": -1.0}, "lr_gen"),
    ({}, {"ttur_ratio": 2.5}, "ttur_ratio"),
    ({}, {"t_lo": 0.99}, "t_lo"),
])
def test_start_run_refuses_bad_values_naming_the_field_and_writes_nothing(ctx, changes, knob_values, field):
    form = {**GOOD, **changes}
    with pytest.raises(ValueError) as error:
        runs.start_run(ctx, "local", form["teacher"], form["method"], form["preset"], form["student_steps"],
                       form["iterations"], form["seed"], knob_values)
    assert field in str(error.value), str(error.value)
    assert all_runs(ctx) == []


def test_start_run_queues_one_distill_run(ctx):
    run_id, message = runs.start_run(ctx, "local", "toy2d-ring", "dmd2", "toy2d", 1.0, 50, 7,
                                     {"ttur_ratio": 3.0, "lr_gen": 0.0001, "gan": True, "lr_schedule": "constant"})
    assert message == f"Run {run_id} queued: dmd2 (1-step) from toy2d-ring, preset toy2d with ttur_ratio=3."
    [run] = all_runs(ctx)
    assert (run.id, run.kind, run.status, run.total) == (run_id, "distill", "queued", 50)
    assert run.spec == {"teacher": "toy2d-ring", "method": "dmd2", "preset": "toy2d", "student_steps": 1,
                        "sets": ["ttur_ratio=3"], "iterations": 50, "batch_size": None, "grad_accum": 1, "seed": 7,
                        "checkpoint_every": None, "prompts": None, "data": None, "init": None}
    assert run.dispatched_at is not None and broker_messages(ctx) == 1  # sent through the embedded broker


def test_start_run_without_changes_has_no_sets(ctx):
    run_id, message = runs.start_run(ctx, "local", "toy2d-ring", "mmd", "toy2d", 8, 20, 0, {"lr_gen": 1e-4})
    assert message.endswith("preset toy2d.")
    assert get(ctx, run_id).spec["sets"] == []


def test_start_run_is_throttled_per_user(ctx):
    now = time.monotonic()  # the clock start_run's throttle reads: these submissions are seconds old at most
    for _ in range(SUBMITS_PER_MINUTE):
        ctx.throttle("alice", now=now)
    args = ("toy2d-ring", "dmd2", "toy2d", 1, 50, 0, {})
    with pytest.raises(ValueError, match="too many submissions"):
        runs.start_run(ctx, "alice", *args)
    assert all_runs(ctx) == []
    run_id, _ = runs.start_run(ctx, "bob", *args)
    assert [r.id for r in all_runs(ctx)] == [run_id]


# -- Runs: status, table, log, previews ----------------------------------------------------------------------

def test_display_status(ctx):
    queued, cancelling, stalled, live, done, failed = (create(ctx) for _ in range(6))
    for run_id in (cancelling, live, done, failed):
        claim(ctx, run_id)
    claim(ctx, stalled, now=T0, lease_s=0.001)
    with session_scope(ctx.factory) as session:
        assert repo.request_cancel(session=session, run_id=cancelling)
    finish(ctx, done)
    finish(ctx, failed, "failed", "boom")
    later = T0 + timedelta(seconds=1)
    status = {run_id: runs.display_status(get(ctx, run_id), now=later) for run_id in range(1, 7)}
    assert status == {queued: "queued", cancelling: "cancelling", stalled: "stalled", live: "running",
                      done: "succeeded", failed: "failed"}
    assert runs.display_status(get(ctx, stalled), now=T0) == "running"  # its lease had not lapsed yet


def test_runs_rows(ctx):
    long_error = "x" * 300
    distill = create(ctx, "distill", {"teacher": "digits", "method": "mmd", "student_steps": 8})
    teacher = create(ctx, "teacher", {"name": "digits"})
    sample = create(ctx, "sample", {"model": "teacher:digits", "steps": 4, "seeds": [0]})
    evaluate = create(ctx, "evaluate", {"models": ["run:1", "teacher:digits@4"], "metrics": ["fid", "kid"], "n": 10})
    past = datetime(2020, 1, 1, tzinfo=UTC)
    claim(ctx, distill, now=past, lease_s=0.001)  # stalled
    progress_row = create(ctx, "distill", {"teacher": "digits", "method": "dmd2", "student_steps": 1})
    claim(ctx, teacher, now=past)
    finish(ctx, teacher, now=past + timedelta(seconds=3725))
    claim(ctx, sample, now=past)
    finish(ctx, sample, "failed", long_error, now=past + timedelta(seconds=1))
    rows = runs.runs_rows(ctx)
    assert all(len(r) == len(runs.RUN_COLUMNS) for r in rows)
    by_id = {r[0]: r for r in rows}
    assert [r[0] for r in rows] == [progress_row, evaluate, sample, teacher, distill]  # newest first
    assert by_id[distill][:8] == [distill, "distill", "digits", "mmd", "8", "stalled", 0.0, "2020-01-01 00:00:00"]
    assert re.fullmatch(r"\d{2,}:[0-5]\d:[0-5]\d", by_id[distill][8]) and by_id[distill][9] == ""  # running since 2020
    assert by_id[teacher] == [teacher, "teacher", "digits", "teacher training", "", "succeeded", 0.0,
                              "2020-01-01 00:00:00", "1:02:05", ""]
    assert by_id[sample][1:6] == ["sample", "teacher:digits", "sample", "4", "failed"]
    assert by_id[sample][9] == long_error[:120]
    assert by_id[evaluate][1:6] == ["evaluate", "run:1, teacher:digits@4", "evaluate fid+kid", "", "queued"]
    assert by_id[progress_row][5:9] == ["queued", 0.0, "", ""]


def test_runs_rows_progress(ctx):
    run_id = create(ctx)
    claim(ctx, run_id, now=datetime.now(UTC))
    progress(ctx, run_id, 25, now=datetime.now(UTC))
    [row] = runs.runs_rows(ctx)
    assert row[5:7] == ["running", 25.0]


def test_log_tail_returns_the_last_lines_of_a_long_log(ctx):
    run = get(ctx, create(ctx))
    folder = ctx.data_dir / run.out_dir
    folder.mkdir(parents=True)
    lines = [f"line {i:05d} " + "·" * 80 for i in range(5000)]  # ~ 1 MB, multi-byte characters
    (folder / "run.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert runs.log_tail(ctx, run, lines=3) == "\n".join(lines[-3:])
    tail = runs.log_tail(ctx, run).splitlines()
    assert tail == lines[-runs.LOG_LINES:]


def test_log_tail_falls_back_to_metrics_then_nothing(ctx):
    run = get(ctx, create(ctx))
    assert runs.log_tail(ctx, run) == ""
    folder = ctx.data_dir / run.out_dir
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    assert runs.log_tail(ctx, run, lines=1) == '{"step": 2}'
    (folder / "run.log").write_text("started\n")
    assert runs.log_tail(ctx, run) == "started"


def test_preview_at_snaps_down_to_a_saved_preview(ctx):
    run_id = create(ctx)
    folder = ctx.data_dir / f"runs/{run_id}/previews"
    colors = {100: (255, 0, 0), 200: (0, 255, 0), 300: (0, 0, 255)}
    files = {step: write_png(folder / f"step-{step:07d}.png", color) for step, color in colors.items()}
    served = served_dir(ctx.data_dir).resolve()
    for step, shown in [(250, 200), (200, 200), (300, 300), (10_000, 300), (99, 100), (0, 100), (None, 100)]:
        path, caption = runs.preview_at(ctx, run_id, step)
        assert caption == f"previews at training step {shown} (fixed seeds)"
        assert Path(path).parent == served
        assert Path(path).read_bytes() == files[shown].read_bytes()
    assert runs.preview_at(ctx, create(ctx), 100) == (None, "no previews yet")
    assert runs.preview_at(ctx, 999, 100) == (None, "no previews yet")
    assert runs.run_detail(ctx, run_id)["preview_steps"] == [100, 200, 300]


def test_run_detail(ctx):
    assert runs.run_detail(ctx, None)["summary"] == "Select a run."
    with pytest.raises(ValueError, match=r"^run: no run with id 999"):
        runs.run_detail(ctx, 999)
    run_id = create(ctx)
    claim(ctx, run_id)
    with session_scope(ctx.factory) as session:
        repo.record_metrics(session=session, run_id=run_id, step=10, values={"loss/gen": 0.5, "lr": 1e-4})
    finish(ctx, run_id, "failed", "out of memory")
    detail = runs.run_detail(ctx, run_id)
    assert detail["status"] == "failed"
    assert "**Error:** out of memory" in detail["summary"]
    assert detail["metrics"].to_dict("records") == [{"step": 10, "key": "loss/gen", "value": 0.5}]


def test_cancel_and_resume(ctx):
    queued, running = create(ctx), create(ctx)
    claim(ctx, running)
    assert runs.cancel_run(ctx, queued) == f"Run {queued}: cancelled."
    assert runs.cancel_run(ctx, running) == f"Run {running}: cancelling (stops at its next checkpoint)."
    with pytest.raises(ValueError, match=r"^run: .* is cancelled"):
        runs.cancel_run(ctx, queued)
    assert "queued again" in runs.resume_run(ctx, queued)
    assert get(ctx, queued).status == "queued"
    with pytest.raises(ValueError, match=r"^run: .* is running"):
        runs.resume_run(ctx, running)
