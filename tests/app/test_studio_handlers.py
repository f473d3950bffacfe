"""The studio's handlers as plain functions (STUDY.md §5.6, "handlers first"): Runs, Compare, Leaderboard and Teachers
tabs, the served-file copies and the mount's path rules, against a real migrated SQLite database and the embedded
SQLite broker in a temporary data dir. Runs are put into each state through storage.repo, as workers do."""

from __future__ import annotations

import os
import re
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.studio import compare, leaderboard, runs, teachers
from app.studio.context import SUBMITS_PER_MINUTE
from app.studio.files import placeholder, servable, served_dir
from app.studio.server import mount_kwargs
from storage import repo
from storage.db import session_scope
from tests.app.studio_env import close_studio, migrated_template, open_studio, use_data_dir, write_png

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
WORKER = "host:1"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return migrated_template(tmp_path_factory.mktemp("template"))


@pytest.fixture
def make_ctx(tmp_path, monkeypatch, template):
    opened = []

    def make(**env):
        use_data_dir(monkeypatch, tmp_path / "data", template, **env)
        opened.append(open_studio())
        return opened[-1]
    yield make
    for ctx in opened:
        close_studio(ctx)


@pytest.fixture
def ctx(make_ctx):
    return make_ctx()


def all_runs(ctx) -> list:
    with session_scope(ctx.factory) as session:
        return list(reversed(repo.list_runs(session=session)))


def create(ctx, kind: str = "distill", spec: dict | None = None, out_dir: str | None = None) -> int:
    spec = spec or {"teacher": "digits", "method": "dmd2", "student_steps": 1}
    with session_scope(ctx.factory) as session:
        return repo.create_run(session=session, kind=kind, spec=spec, total=100, out_dir=out_dir).id


def claim(ctx, run_id: int, now: datetime = T0, lease_s: float = 600) -> None:
    with session_scope(ctx.factory) as session:
        assert repo.claim_run(session=session, run_id=run_id, worker=WORKER, lease_s=lease_s, now=now)


def progress(ctx, run_id: int, step: int, now: datetime = T0) -> None:
    with session_scope(ctx.factory) as session:
        assert repo.heartbeat(session=session, run_id=run_id, worker=WORKER, lease_s=600, step=step, now=now)


def finish(ctx, run_id: int, status: str = "succeeded", error: str | None = None, now: datetime = T0) -> None:
    with session_scope(ctx.factory) as session:
        assert repo.finish_run(session=session, run_id=run_id, worker=WORKER, status=status, error=error, now=now)


def checkpoints(ctx, run_id: int, *steps: int) -> None:
    with session_scope(ctx.factory) as session:
        for step in steps:
            repo.record_checkpoint(session=session, run_id=run_id, step=step, path=f"runs/{run_id}/ckpt-{step}")


def get(ctx, run_id: int):
    with session_scope(ctx.factory) as session:
        run = repo.get_run(session=session, run_id=run_id)
        session.expunge(run)
        return run


def broker_messages(ctx) -> int:
    with sqlite3.connect(ctx.data_dir / "broker.db") as db:
        return db.execute("SELECT count(*) FROM kombu_message").fetchone()[0]


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
                        "sets": ["ttur_ratio=3"], "iterations": 50, "batch_size": None, "seed": 7,
                        "checkpoint_every": None}
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


# -- files: what the browser may fetch -----------------------------------------------------------------------

def test_servable_copies_a_png_under_served(ctx):
    source = write_png(ctx.data_dir / "runs/1/previews/step-0000010.png")
    path = Path(servable(ctx.data_dir, "runs/1/previews/step-0000010.png"))
    assert path.parent == served_dir(ctx.data_dir).resolve() and path.suffix == ".png"
    assert path.read_bytes() == source.read_bytes()
    assert servable(ctx.data_dir, source) == str(path)  # an absolute path inside names the same copy
    mtime = path.stat().st_mtime_ns
    assert servable(ctx.data_dir, "runs/1/previews/step-0000010.png") == str(path)  # idempotent: no second copy
    assert path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in served_dir(ctx.data_dir).iterdir()) == [path.name]


def test_a_changed_file_gets_a_new_name(ctx):
    source = write_png(ctx.data_dir / "samples/a.png", (1, 2, 3))
    first = servable(ctx.data_dir, "samples/a.png")
    write_png(source, (200, 100, 0), size=8)
    second = servable(ctx.data_dir, "samples/a.png")
    assert second != first and Path(second).read_bytes() == source.read_bytes()
    same_size = source.read_bytes()
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # rewritten in place, same size
    assert source.read_bytes() == same_size
    assert servable(ctx.data_dir, "samples/a.png") not in (first, second)
    other = ctx.data_dir / "samples/b.png"
    other.write_bytes(source.read_bytes())
    os.utime(other, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns))
    assert servable(ctx.data_dir, "samples/b.png") != servable(ctx.data_dir, "samples/a.png")  # the name has the path


def test_servable_refuses_paths_outside_the_data_dir(ctx, tmp_path):
    outside = write_png(tmp_path / "outside.png")
    with pytest.raises(ValueError, match="outside the data dir"):
        servable(ctx.data_dir, outside)
    with pytest.raises(ValueError, match="outside the data dir"):
        servable(ctx.data_dir, ctx.data_dir / ".." / "outside.png")
    with pytest.raises(ValueError):
        servable(ctx.data_dir, "../outside.png")
    (ctx.data_dir / "runs").mkdir()
    (ctx.data_dir / "runs/link.png").symlink_to(outside)
    (ctx.data_dir / "runs/linked-dir").symlink_to(tmp_path, target_is_directory=True)
    for stored in ("runs/link.png", ctx.data_dir / "runs/link.png", "runs/linked-dir/outside.png"):
        with pytest.raises(ValueError, match="outside the data dir"):
            servable(ctx.data_dir, stored)
    assert not served_dir(ctx.data_dir).exists()


def test_servable_refuses_anything_but_png(ctx):
    (ctx.data_dir / "runs/1").mkdir(parents=True)
    (ctx.data_dir / "runs/1/model.safetensors").write_bytes(b"weights")
    for stored in ("runs/1/model.safetensors", "studio.db", ctx.data_dir / "studio.db"):
        with pytest.raises(ValueError, match="only PNG images are served"):
            servable(ctx.data_dir, stored)
    (ctx.data_dir / "runs/1/db.png").symlink_to(ctx.data_dir / "studio.db")  # a PNG name on another file
    with pytest.raises(ValueError, match="only PNG images are served"):
        servable(ctx.data_dir, "runs/1/db.png")
    assert not served_dir(ctx.data_dir).exists()


def test_servable_leaves_another_writers_temporary_file_alone(ctx):
    """Handlers run concurrently (concurrency_limit=None): two copying the same new file must not share a temporary
    file, or one moves the other's half-written copy into place (or finds its own gone)."""
    write_png(ctx.data_dir / "samples/a.png")
    target = Path(servable(ctx.data_dir, "samples/a.png"))
    target.unlink()
    theirs = [target.with_suffix(".tmp"), target.with_name(target.name + ".tmp")]
    for path in theirs:
        path.write_bytes(b"another handler's copy in progress")
    assert servable(ctx.data_dir, "samples/a.png") == str(target)
    assert target.read_bytes() == (ctx.data_dir / "samples/a.png").read_bytes()
    assert [p.read_bytes() for p in theirs] == [b"another handler's copy in progress"] * 2
    assert sorted(p.name for p in served_dir(ctx.data_dir).iterdir()) == sorted([target.name] + [p.name for p in theirs])


def test_placeholder_is_a_served_png(ctx):
    path = Path(placeholder(ctx.data_dir))
    assert path.parent == served_dir(ctx.data_dir) and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert placeholder(ctx.data_dir) == str(path)


def test_mount_allows_only_served(ctx):
    kwargs = mount_kwargs(ctx.data_dir)
    assert kwargs["allowed_paths"] == [str(ctx.data_dir / "served")]
    blocked = set(kwargs["blocked_paths"])
    for name in ("runs", "teachers", "teacher-runs", "references", "import", "studio.db", "broker.db"):
        assert str(ctx.data_dir / name) in blocked
    assert str(ctx.data_dir) not in blocked | set(kwargs["allowed_paths"])
    assert kwargs["mcp_server"] is False and kwargs["footer_links"] == [] and kwargs["enable_monitoring"] is False


# -- Compare --------------------------------------------------------------------------------------------------

def test_parse_steps():
    assert compare.parse_steps("1,4,50") == [1, 4, 50]
    assert compare.parse_steps(" 4, 4 ,1,") == [4, 1]
    assert compare.parse_steps(1000) == [1000]


@pytest.mark.parametrize("text, rule", [("a", "comma-separated whole numbers"), ("1.5", "comma-separated"),
                                        ("4;8", "comma-separated"), ("", "one or more"), (",", "one or more"),
                                        ("0", "between 1 and 1000"), ("4,1001", "between 1 and 1000")])
def test_parse_steps_errors(text, rule):
    with pytest.raises(ValueError, match=rf"^teacher steps: .*{rule}"):
        compare.parse_steps(text)


def _cells(rows: int, cols: int) -> list[tuple[int, int]]:
    return [(r, c) for r in range(rows) for c in range(cols)]


def test_page_slices_whole_rows_of_seed_columns():
    assert compare.PAGE_CELLS == 64
    cells = _cells(3, 50)  # 3 rows: 21 seeds a page (63 cells), 3 pages
    out, index, pages, cols = compare.page(cells, 50, 3, 0)
    assert (index, pages, cols) == (0, 3, 21)
    assert out == [(r, c) for r in range(3) for c in range(21)]
    out, index, pages, cols = compare.page(cells, 50, 3, 1)
    assert (index, cols, out[0], out[20], out[21]) == (1, 21, (0, 21), (0, 41), (1, 21))
    last = [(r, c) for r in range(3) for c in range(42, 50)]
    assert compare.page(cells, 50, 3, 2) == (last, 2, 3, 8)
    assert compare.page(cells, 50, 3, 7) == (last, 2, 3, 8)  # past the end: the last page
    assert compare.page(cells, 50, 3, -1)[1:] == (0, 3, 21)


def test_page_edge_cases():
    assert compare.page(_cells(1, 8), 8, 1, 0) == (_cells(1, 8), 0, 1, 8)
    assert compare.page(_cells(2, 64), 64, 2, 0)[1:] == (0, 2, 32)
    assert compare.page(_cells(1, 64), 64, 1, 0)[1:] == (0, 1, 64)
    many = _cells(100, 2)  # more rows than a page holds: one seed column a page, every row
    out, index, pages, cols = compare.page(many, 2, 100, 1)
    assert (index, pages, cols) == (1, 2, 1) and out == [(r, 1) for r in range(100)]
    assert compare.page([], 0, 0, 0) == ([], 0, 1, 0)


@pytest.fixture
def students(ctx):
    """A succeeded dmd2 run (checkpoints 100, 200, final step 300) and a running 4-step mmd one (50, 150)."""
    done = create(ctx, spec={"teacher": "digits", "method": "dmd2", "student_steps": 1})
    claim(ctx, done)
    checkpoints(ctx, done, 100, 200)
    progress(ctx, done, 300)
    finish(ctx, done)
    live = create(ctx, spec={"teacher": "digits", "method": "mmd", "student_steps": 4})
    claim(ctx, live)
    checkpoints(ctx, live, 50, 150)
    return f"run:{done}", f"run:{live}"


def test_variants_pick_each_students_checkpoint_at_or_below_the_step(ctx, students):
    done, live = students
    rows = compare.variants(ctx, "digits", "1,4", [done, live], 250)
    assert [(v.model, v.steps, v.checkpoint, v.final) for v in rows] == [
        ("teacher:digits", 1, 0, True), ("teacher:digits", 4, 0, True), (done, 1, 200, False), (live, 4, 150, False)]
    assert [v.label for v in rows] == ["teacher digits", "teacher digits", "dmd2 run 1", "mmd run 2"]
    at = {step: [(v.checkpoint, v.final) for v in compare.variants(ctx, "digits", "50", [done, live], step)[1:]]
          for step in (None, 10, 100, 199, 299, 300, 5000)}
    assert at == {None: [(300, True), (150, False)], 10: [(100, False), (50, False)], 100: [(100, False), (50, False)],
                  199: [(100, False), (150, False)], 299: [(200, False), (150, False)], 300: [(300, True), (150, False)],
                  5000: [(300, True), (150, False)]}


def test_only_a_final_variant_samples_without_a_checkpoint(ctx, students):
    done, live = students
    rows = compare.variants(ctx, "digits", "50", [done, live], 200)
    assert rows[1].sample_spec([1, 2], None) == {"model": done, "seeds": [1, 2], "steps": 1, "class_id": None,
                                                 "checkpoint": 200}
    final = compare.variants(ctx, "digits", "50", [done], None)[1]
    assert final.sample_spec([3], 7) == {"model": done, "seeds": [3], "steps": 1, "class_id": 7}
    assert final.caption(3) == "dmd2 run 1 · step 300 · seed 3 · 1 NFE"
    assert rows[0].caption(None) == "teacher digits · 50 NFE"


def test_variants_errors(ctx, students):
    empty = create(ctx)
    sample = create(ctx, "sample", {"model": "teacher:digits", "seeds": [0]})
    for ref, rule in [("run:999", "is not a distill run"), (f"run:{sample}", "is not a distill run"),
                      (f"run:{empty}", "has no weights yet")]:
        with pytest.raises(ValueError, match=rf"^students: .*{rule}"):
            compare.variants(ctx, "digits", "4", [ref], None)
    with pytest.raises(ValueError, match="^teacher steps: "):
        compare.variants(ctx, "digits", "x", list(students), None)


def test_student_choices_list_runs_with_weights(ctx, students):
    create(ctx)  # queued, no weights
    other = create(ctx, spec={"teacher": "toy2d-ring", "method": "dmd2", "student_steps": 1})
    claim(ctx, other)
    checkpoints(ctx, other, 10)
    assert [ref for _, ref in compare.student_choices(ctx, "digits")] == [students[1], students[0]]
    assert compare.student_choices(ctx, "toy2d-ring") == [(f"run {other} · dmd2-1 · running", f"run:{other}")]
    assert compare.checkpoint_range(ctx, list(students)) == (50, 300)
    assert compare.checkpoint_range(ctx, []) == (0, 1)


def _record(ctx, model: str, steps: int, seed: int, checkpoint: int = 0, color=(9, 9, 9)) -> Path:
    relative = f"samples/{model.replace(':', '-')}/{steps}-{checkpoint}-{seed}.png"
    path = write_png(ctx.data_dir / relative, color)
    with session_scope(ctx.factory) as session:
        repo.record_image(session=session, model=model, seed=seed, class_id=None, steps=steps, path=relative,
                          checkpoint=checkpoint)
    return path


def test_grid_finds_recorded_images_and_reports_missing_seeds(ctx, students):
    done, _ = students
    rows = compare.variants(ctx, "digits", "4", [done], 200) + compare.variants(ctx, "digits", "4", [done], None)[1:]
    assert [(r.model, r.checkpoint) for r in rows] == [("teacher:digits", 0), (done, 200), (done, 300)]
    teacher0 = _record(ctx, "teacher:digits", 4, 0, color=(1, 0, 0))
    teacher2 = _record(ctx, "teacher:digits", 4, 2, color=(2, 0, 0))
    _record(ctx, "teacher:digits", 50, 1)  # another step count: not this row's
    student1 = _record(ctx, done, 1, 1, checkpoint=200, color=(3, 0, 0))
    got = compare.grid(ctx, "digits", rows, [0, 1, 2, 3], None)
    assert (got["columns"], got["points"], got["pending"]) == (4, False, [])
    assert got["missing"] == {0: [1, 3], 1: [0, 2, 3], 2: [0, 1, 2, 3]}
    paths = [p for p, _ in got["cells"]]
    assert len(paths) == 12 and [p is not None for p in paths] == [True, False, True, False, False, True] + [False] * 6
    assert Path(paths[0]).read_bytes() == teacher0.read_bytes() and Path(paths[2]).read_bytes() == teacher2.read_bytes()
    assert Path(paths[5]).read_bytes() == student1.read_bytes()
    assert all(Path(p).parent == served_dir(ctx.data_dir).resolve() for p in paths if p)
    assert got["cells"][5][1] == "dmd2 run 1 · step 200 · seed 1 · 1 NFE"


def test_grid_requests_then_waits_for_missing_images(ctx):
    rows = compare.variants(ctx, "digits", "4,8", [], None)
    _record(ctx, "teacher:digits", 8, 0)
    _record(ctx, "teacher:digits", 8, 1)
    got = compare.grid(ctx, "digits", rows, [0, 1], None)
    assert got["missing"] == {0: [0, 1]}
    ids = compare.request_missing(ctx, "local", rows, got["missing"], None)
    assert len(ids) == 1
    sample = get(ctx, ids[0])
    assert (sample.kind, sample.spec["model"], sample.spec["seeds"], sample.spec["steps"]) == ("sample", "teacher:digits",
                                                                                                [0, 1], 4)
    again = compare.grid(ctx, "digits", rows, [0, 1], None)
    assert (again["missing"], again["pending"]) == ({}, ids)  # no second request while it runs
    assert compare.grid(ctx, "digits", rows, [0, 1], 3)["missing"] == {0: [0, 1], 1: [0, 1]}  # another class


def test_grid_draws_again_an_image_whose_file_is_gone(ctx):
    rows = compare.variants(ctx, "digits", "4", [], None)
    _record(ctx, "teacher:digits", 4, 0)
    _record(ctx, "teacher:digits", 4, 1).unlink()  # recorded, then its file deleted (a cleaned-up sample run)
    got = compare.grid(ctx, "digits", rows, [0, 1], None)
    assert got["missing"] == {0: [1]}
    assert got["cells"][0][0] is not None and got["cells"][1][0] is None


def test_points_grid_shows_a_finished_scatter(ctx):
    rows = compare.variants(ctx, "toy2d-ring", "1,50", [], None)
    got = compare.grid(ctx, "toy2d-ring", rows, [0, 1, 2], None)
    assert (got["points"], got["columns"], got["missing"]) == (True, 1, {0: [0, 1, 2], 1: [0, 1, 2]})
    assert got["cells"] == [(None, "teacher toy2d-ring · 1 NFE · 3 seeds"), (None, "teacher toy2d-ring · 50 NFE · 3 seeds")]
    done = create(ctx, "sample", rows[1].sample_spec([0, 1, 2], None))
    claim(ctx, done)
    finish(ctx, done)
    scatter = write_png(ctx.data_dir / f"runs/{done}/scatter.png")
    got = compare.grid(ctx, "toy2d-ring", rows, [0, 1, 2], None)
    assert got["missing"] == {0: [0, 1, 2]}
    assert got["cells"][0][0] is None and Path(got["cells"][1][0]).read_bytes() == scatter.read_bytes()
    scatter.unlink()  # the run's folder cleaned up: draw it again rather than wait forever
    assert compare.grid(ctx, "toy2d-ring", rows, [0, 1, 2], None)["missing"] == {0: [0, 1, 2], 1: [0, 1, 2]}


# -- Leaderboard ----------------------------------------------------------------------------------------------

def _evaluate(ctx, model: str, metric: str, value: float, steps: int, nfe: int, run_id: int | None = None) -> None:
    with session_scope(ctx.factory) as session:
        repo.record_evaluation(session=session, model=model, metric=metric, value=value, n=1000, extractor="digits-cnn",
                               reference="digits-train", seed=0, steps=steps, nfe=nfe, run_id=run_id)


def test_board_shapes_the_leaderboard(ctx):
    run_id = create(ctx, spec={"teacher": "digits", "method": "dmd2", "student_steps": 1})
    sample = create(ctx, "sample", {"model": "teacher:digits", "seeds": [0]})
    _evaluate(ctx, "teacher:digits", "fid", 3.21, 50, 50)
    _evaluate(ctx, "teacher:digits", "fid", 20.0, 4, 4)
    _evaluate(ctx, f"run:{run_id}", "fid", 12.345678, 1, 1, run_id)
    _evaluate(ctx, f"run:{run_id}", "kid", 0.0123456789, 1, 1, run_id)
    _evaluate(ctx, f"run:{run_id}", "ms_per_image", 0.5, 1, 1, run_id)
    _evaluate(ctx, f"run:{sample}", "fid", 30.0, 1, 1)  # not a distill run: shown by its reference
    table, plot = leaderboard.board(ctx)
    assert list(table.columns) == leaderboard.COLUMNS
    name = f"run:{run_id} dmd2-1 of digits"
    assert table["model"].tolist() == ["teacher:digits", name, "teacher:digits", f"run:{sample}"]  # by FID
    row = table[table["model"] == name].iloc[0].to_dict()
    assert {k: row[k] for k in ("steps", "NFE", "FID", "KID", "ms/image", "n", "reference")} == {
        "steps": 1, "NFE": 1, "FID": 12.35, "KID": 0.01235, "ms/image": 0.5, "n": 1000, "reference": "digits-train"}
    assert row["precision"] is None or row["precision"] != row["precision"]  # missing: None or NaN
    assert sorted(plot.itertuples(index=False, name=None)) == sorted(
        [(4, 20.0, "teacher:digits"), (50, 3.21, "teacher:digits"), (1, 12.345678, name), (1, 30.0, f"run:{sample}")])
    assert [str(t) for t in plot.dtypes] == ["int64", "float64", "object"]


def test_board_of_an_empty_store(ctx):
    table, plot = leaderboard.board(ctx)
    assert table.empty and list(table.columns) == leaderboard.COLUMNS
    assert plot is None  # no value at all: a plot given an empty frame never draws later points


@pytest.mark.parametrize("models, metrics, n, field", [
    ([], ["speed"], 100, "models"),
    (["teacher:toy2d-ring@4"], [], 100, "metrics"),
    (["teacher:toy2d-ring@4"], ["speed"], None, "n"),
    (["teacher:toy2d-ring@4"], ["speed"], 99.5, "n"),
    (["teacher:toy2d-ring@4"], ["speed"], 1, "n"),
    (["teacher:toy2d-ring@4"], ["no-such-metric"], 100, "metrics"),
    (["run:999"], ["speed"], 100, "model"),
    (["teacher:no-such-teacher"], ["speed"], 100, "model"),
])
def test_queue_evaluation_errors_name_the_field(ctx, models, metrics, n, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        leaderboard.queue_evaluation(ctx, "local", models, metrics, n)
    assert all_runs(ctx) == []


def test_queue_evaluation_writes_an_evaluate_run(ctx):
    message = leaderboard.queue_evaluation(ctx, "local", ["teacher:toy2d-ring@4"], ["speed"], 100.0)
    [run] = all_runs(ctx)
    assert message.startswith(f"Evaluation run {run.id} queued (1 model(s), n = 100)")
    assert (run.kind, run.status, run.spec["models"], run.spec["metrics"], run.spec["n"]) == (
        "evaluate", "queued", ["teacher:toy2d-ring@4"], ["speed"], 100)
    assert broker_messages(ctx) == 1


def test_model_choices_offer_teachers_and_succeeded_runs(ctx, students):
    refs = [ref for _, ref in leaderboard.model_choices(ctx)]
    assert "teacher:digits@4" in refs and "teacher:toy2d-ring@50" in refs
    assert not any(ref.startswith("teacher:toy2d-ring-gmm") for ref in refs)  # analytic
    assert [ref for ref in refs if ref.startswith("run:")] == [students[0]]


# -- Teachers: what may be imported ---------------------------------------------------------------------------

def test_check_import_path(make_ctx, tmp_path):
    root, other = tmp_path / "imports", tmp_path / "elsewhere"
    (root / "pipe").mkdir(parents=True)
    (root / "nested/deeper").mkdir(parents=True)
    (root / "file.txt").write_text("not a folder")
    other.mkdir()
    (tmp_path / "imports-evil").mkdir()
    (root / "link").symlink_to(other, target_is_directory=True)
    ctx = make_ctx(import_roots=f"{tmp_path / 'unused'}:{root}")
    assert teachers.check_import_path(ctx, f"  {root / 'pipe'}  ") == (root / "pipe").resolve()
    assert teachers.check_import_path(ctx, str(root / "nested/deeper")) == (root / "nested/deeper").resolve()
    assert teachers.check_import_path(ctx, str(root)) == root.resolve()
    refused = {
        "": "give a local diffusers folder", "   ": "give a local diffusers folder",
        "pipe": "must be absolute", "imports/pipe": "must be absolute", "./pipe": "must be absolute",
        str(other): "only folders under", f"{root}/../elsewhere": "only folders under",
        str(tmp_path / "imports-evil"): "only folders under", str(root / "link"): "only folders under",
        "/etc": "only folders under",
        str(root / "file.txt"): "is not a folder", str(root / "missing"): "is not a folder",
    }
    for text, rule in refused.items():
        with pytest.raises(ValueError, match=rf"^path: .*{rule}"):
            teachers.check_import_path(ctx, text)


def test_import_root_defaults_to_the_data_dirs_import_folder(ctx, tmp_path):
    assert teachers.import_roots(ctx) == [(ctx.data_dir / "import").resolve()]
    (ctx.data_dir / "import/pipe").mkdir(parents=True)
    assert teachers.check_import_path(ctx, str(ctx.data_dir / "import/pipe")) == (ctx.data_dir / "import/pipe").resolve()
    with pytest.raises(ValueError, match="^path: only folders under"):
        teachers.check_import_path(ctx, str(tmp_path))


def test_teacher_rows_and_training(ctx):
    rows = {r[0]: r for r in teachers.teacher_rows(ctx)}
    assert rows["digits"][1:6] == ["built-in", "unet", "digits", "1×16×16", 10]
    with pytest.raises(ValueError, match="^iterations: "):
        teachers.train_teacher(ctx, "local", "digits", 2.5)
    with pytest.raises(ValueError, match="^name: "):
        teachers.train_teacher(ctx, "local", "no-such-teacher", 10)
    assert all_runs(ctx) == []
    assert teachers.train_teacher(ctx, "local", "digits", 10.0).startswith("Teacher run 1 queued")
    assert get(ctx, 1).spec["iterations"] == 10
