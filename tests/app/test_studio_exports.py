"""Export from the Runs tab (app/studio/exports.py): a finished digits student is exported by a real export job (run
in-process through workers.jobs.execute), the tab shows its folder and the lines that load it, and the archive is
zipped under served/exports only, within the download cap; refusals name the field and queue nothing."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from app.studio import exports
from app.studio.files import served_dir
from tests.app.studio_ctx import all_runs


@pytest.fixture
def student(make_ctx):
    """A studio whose archive cap is 1 MB, and a finished 1-step digits student of it (4 iterations)."""
    from workers.jobs import execute

    ctx = make_ctx(max_archive_mb="1")
    run_id = ctx.jobs.submit("distill", {"teacher": "digits", "method": "dmd2", "preset": "digits", "student_steps": 1,
                                         "iterations": 4})
    assert execute(run_id, "distill") == "succeeded"
    return ctx, run_id


def test_export_queues_the_cli_export_and_shows_how_to_load_it(student):
    from workers.jobs import execute

    ctx, run_id = student
    assert exports.export_text(ctx, run_id) == ""  # nothing exported yet
    message = exports.queue_export(ctx, "local", run_id)
    [export] = [r for r in all_runs(ctx) if r.kind == "export"]
    assert message.startswith(f"Export run {export.id} queued for run {run_id}")
    assert export.spec == {"model": f"run:{run_id}", "step": None}
    assert exports.export_text(ctx, run_id) == f"Export run {export.id}: **queued**"
    assert execute(export.id, "export") == "succeeded"
    text = exports.export_text(ctx, run_id)
    folder = ctx.data_dir / "runs" / str(export.id) / "pipeline"
    assert f"a diffusers pipeline in `{folder}`" in text
    assert "```python\nfrom diffusers import DiffusionPipeline" in text and "images = pipe(" in text


def test_the_archive_is_served_from_exports_only_and_capped(student, monkeypatch):
    from workers.jobs import execute

    ctx, run_id = student
    with pytest.raises(ValueError, match=rf"^export: run {run_id} has no finished export; press Export first"):
        exports.archive(ctx, run_id)
    exports.queue_export(ctx, "local", run_id)
    [export] = [r for r in all_runs(ctx) if r.kind == "export"]
    assert execute(export.id, "export") == "succeeded"
    folder = ctx.data_dir / "runs" / str(export.id) / "pipeline"
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    assert size_mb > 1  # the digits UNet alone is 4.4 MB: over this studio's 1 MB cap
    with pytest.raises(ValueError, match=r"^export: the pipeline is \d+ MB, over the download cap of 1 MB"):
        exports.archive(ctx, run_id)
    monkeypatch.setattr(ctx.settings, "max_archive_mb", 64)
    path = Path(exports.archive(ctx, run_id))
    assert path.parent.parent == (served_dir(ctx.data_dir) / exports.EXPORTS) and len(path.parent.name) == 16
    with zipfile.ZipFile(path) as zf:
        names = sorted(zf.namelist())
        assert f"student-run-{run_id}/model_index.json" in names
        assert sorted(n.split("/", 1)[1] for n in names) == sorted(
            p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert Path(exports.archive(ctx, run_id)) != path  # every download gets its own unguessable folder


def test_export_refusals_name_the_field_and_queue_nothing(make_ctx):
    ctx = make_ctx()
    with pytest.raises(ValueError, match="^run: select a finished distill run first"):
        exports.queue_export(ctx, "local", None)
    running = ctx.jobs.submit("distill", {"teacher": "digits", "method": "dmd2", "preset": "digits", "iterations": 4})
    with pytest.raises(ValueError, match=rf"^model: run {running} has not succeeded \(status queued\)"):
        exports.queue_export(ctx, "local", running)
    assert [r.kind for r in all_runs(ctx)] == ["distill"]
