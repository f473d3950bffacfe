"""Artifact paths: the database stores them relative to the data dir, and nothing outside it is ever read or served.

A stored path is checked twice: by its text when it is recorded (`check_relative`), and on the disk when it is
opened (`resolve`), because a symlink inside the data dir can point anywhere.
"""

from __future__ import annotations

from pathlib import Path, PurePath, PurePosixPath


def check_relative(path: str | PurePath) -> str:
    """The stored form of a relative artifact path (POSIX separators); ValueError if its text could escape."""
    text = str(path)
    pure = PurePosixPath(text)
    if not text or "\0" in text or "\\" in text or pure.is_absolute() or ".." in pure.parts or pure == PurePosixPath("."):
        raise ValueError(f"artifact path {text!r} must be relative to the data dir, without '..' or backslashes")
    return pure.as_posix()


def resolve(data_dir: Path, path: str | PurePath) -> Path:
    """The absolute file behind a stored path; ValueError if it, or a symlink on the way, leads outside the data dir."""
    root = data_dir.resolve()
    target = (root / check_relative(path)).resolve()  # follows symlinks; the file need not exist yet
    if not target.is_relative_to(root):
        raise ValueError(f"artifact path {str(path)!r} leads outside the data dir (through a symlink)")
    return target


def relative_path(data_dir: Path, path: Path) -> str:
    """The stored form of a file a worker wrote under the data dir; ValueError for anything outside it."""
    root = data_dir.resolve()
    target = path.resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"artifact path {str(path)!r} is outside the data dir {str(root)!r}")
    return target.relative_to(root).as_posix()
