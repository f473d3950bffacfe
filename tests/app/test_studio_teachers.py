"""The Teachers tab's handlers as plain functions (docs/study.md#handlers-first): which folders may be imported,
the teacher table and queueing a teacher run, against a real migrated SQLite database in a temporary data dir."""

from __future__ import annotations

import pytest

from app.studio import teachers
from tests.app.studio_ctx import all_runs, get

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
