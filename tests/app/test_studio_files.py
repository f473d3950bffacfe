"""What the studio's browser may fetch, as plain functions (docs/study.md#handlers-first): the served-file copies
of PNGs under the data dir, and the mount's path rules, in a temporary data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.studio.files import placeholder, servable, served_dir
from app.studio.server import mount_kwargs
from tests.app.studio_env import write_png

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
    for name in ("runs", "teachers", "teacher-runs", "reference", "import", "studio.db", "broker.db"):
        assert str(ctx.data_dir / name) in blocked
    assert str(ctx.data_dir) not in blocked | set(kwargs["allowed_paths"])
    assert kwargs["mcp_server"] is False and kwargs["footer_links"] == [] and kwargs["enable_monitoring"] is False
