"""Folder features through clean-fid, in-memory features equal to them, and the folder checks."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from cleanfid import fid as cleanfid

from core.images import save_png
from core.metrics import check_folder, folder_features, folder_fid, get_extractor, images_to_features, resize_for

from .conftest import N_PNG


def test_folder_fid_equals_clean_fid_called_directly(png_dirs):
    real, noisy = png_dirs
    direct = cleanfid.compute_fid(str(real), str(noisy), mode="clean", custom_feat_extractor=get_extractor("digits"),
                                  custom_fn_resize=resize_for("digits"), device=torch.device("cpu"), num_workers=0,
                                  verbose=False)
    ours = folder_fid(real, noisy, "digits")
    assert ours == pytest.approx(direct, abs=1e-6)
    assert ours > 1.0  # noise is seen
    assert abs(folder_fid(real, real, "digits")) < 1e-6


def test_in_memory_features_equal_the_saved_pngs(png_dirs, digits_noisy):
    from_folder = folder_features(png_dirs[1], "digits")
    assert from_folder.shape == (N_PNG, 64)
    np.testing.assert_allclose(images_to_features("digits", digits_noisy), from_folder, atol=1e-5, rtol=0)


def test_image_layouts_give_the_same_features(digits_real):
    gray = ((digits_real[:16, 0] + 1) * 127.5).round().to(torch.uint8).numpy()  # [N,H,W]
    expected = images_to_features("digits", gray)
    for layout in (gray[..., None], gray[:, None], np.repeat(gray[..., None], 3, -1), np.repeat(gray[:, None], 3, 1),
                   torch.from_numpy(gray[:, None]), digits_real[:16]):
        np.testing.assert_array_equal(images_to_features("digits", layout), expected)


def test_bad_image_input_is_named():
    with pytest.raises(ValueError, match="images: arrays must be uint8"):
        images_to_features("digits", np.zeros((2, 16, 16), np.float32))
    with pytest.raises(ValueError, match="images: expected 4-D"):
        images_to_features("digits", torch.zeros(16, 16))
    with pytest.raises(ValueError, match="images: cannot tell the channel axis"):
        images_to_features("digits", np.zeros((2, 16, 16, 16), np.uint8))


def test_folder_features_takes_the_first_num_files(png_dirs):
    np.testing.assert_array_equal(folder_features(png_dirs[0], "digits", num=50), folder_features(png_dirs[0], "digits")[:50])
    with pytest.raises(ValueError, match=f"num: asked for {N_PNG + 1} images but .* holds {N_PNG}"):
        folder_features(png_dirs[0], "digits", num=N_PNG + 1)


def test_check_folder_lists_the_images(png_dirs):
    files = check_folder(png_dirs[0])
    assert len(files) == N_PNG and files == sorted(files)


def test_missing_and_empty_folders_are_named(tmp_path, png_dirs):
    with pytest.raises(ValueError, match=f"folder: {re.escape(str(tmp_path / 'nope'))} does not exist"):
        check_folder(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=f"folder: {re.escape(str(tmp_path))} holds no images"):
        check_folder(tmp_path)
    with pytest.raises(ValueError, match="holds no images"):
        folder_fid(png_dirs[0], tmp_path, "digits")


def test_mixed_sizes_are_named(tmp_path):
    for i in range(3):
        save_png(np.zeros((16, 16), np.uint8), tmp_path / f"small-{i}.png")
    save_png(np.zeros((32, 32), np.uint8), tmp_path / "big.png")
    expected = rf"folder: {re.escape(str(tmp_path))} mixes image sizes: 16x16 \(3 files.*32x32 \(1 files, e.g. big.png\)"
    with pytest.raises(ValueError, match=expected):
        folder_features(tmp_path, "digits")


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="folder: cannot read the image .*broken.png"):
        check_folder(tmp_path)
