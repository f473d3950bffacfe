"""Artifact paths never leave the data dir: not by '..', not as absolute paths, not through a symlink."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pytest

from storage.artifacts import check_relative, relative_path, resolve


@pytest.fixture
def data_dir(tmp_path) -> Path:
    (tmp_path / "data" / "runs" / "1").mkdir(parents=True)
    return tmp_path / "data"


def test_relative_paths_resolve_under_the_data_dir(data_dir):
    assert check_relative("runs/1/./ckpt-100") == "runs/1/ckpt-100"
    assert check_relative(PurePosixPath("runs/1")) == "runs/1"
    assert resolve(data_dir, "runs/1/ckpt-100") == data_dir.resolve() / "runs" / "1" / "ckpt-100"  # need not exist
    assert resolve(data_dir, "runs/1") == data_dir.resolve() / "runs" / "1"


@pytest.mark.parametrize("path", ["../secret", "runs/../../secret", "runs/1/..", "/etc/passwd", "", ".",
                                  "runs\\..\\..\\x", "a\0b"])
def test_escaping_paths_are_refused_naming_the_path(data_dir, path):
    with pytest.raises(ValueError, match="^" + re.escape(f"artifact path {path!r} must be relative")):
        resolve(data_dir, path)


def test_a_symlink_pointing_outside_is_refused(data_dir, tmp_path):
    (tmp_path / "outside").mkdir()
    (data_dir / "runs" / "escape").symlink_to(tmp_path / "outside")
    (data_dir / "runs" / "inside").symlink_to(data_dir / "runs" / "1")
    with pytest.raises(ValueError, match=r"^artifact path 'runs/escape/x.png' leads outside the data dir"):
        resolve(data_dir, "runs/escape/x.png")
    assert resolve(data_dir, "runs/inside/x.png") == data_dir.resolve() / "runs" / "1" / "x.png"


def test_relative_path_is_the_stored_form_of_a_written_file(data_dir, tmp_path):
    assert relative_path(data_dir, data_dir / "runs" / "1" / "student.safetensors") == "runs/1/student.safetensors"
    with pytest.raises(ValueError, match="is outside the data dir"):
        relative_path(data_dir, tmp_path / "elsewhere.png")
