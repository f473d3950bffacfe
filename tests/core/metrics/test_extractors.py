"""The extractor registry: shapes, determinism, the offline Inception error, and Inception's wiring on a stand-in."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from core.metrics import EXTRACTORS, folder_features, folder_fid, get_extractor, images_to_features, resize_for
from core.metrics.convert import keep_size
from core.metrics.extractors import INCEPTION_FILE, InceptionWeightsMissing


def test_registry_describes_each_extractor():
    assert set(EXTRACTORS) == {"inception", "digits", "shapes", "toy2d"}
    assert (EXTRACTORS["inception"].kind, EXTRACTORS["inception"].dims, EXTRACTORS["inception"].resolution) == \
        ("image", 2048, 299)
    assert (EXTRACTORS["digits"].kind, EXTRACTORS["digits"].dims, EXTRACTORS["digits"].resolution) == ("image", 64, 16)
    assert (EXTRACTORS["shapes"].kind, EXTRACTORS["shapes"].dims, EXTRACTORS["shapes"].resolution) == ("image", 96, 32)
    assert (EXTRACTORS["toy2d"].kind, EXTRACTORS["toy2d"].dims, EXTRACTORS["toy2d"].resolution) == ("points", 2, None)
    assert resize_for("inception") is None and resize_for("digits") is keep_size and resize_for("shapes") is keep_size


def test_unknown_extractor_is_named(png_dirs):
    image = np.zeros((1, 8, 8), np.uint8)
    for call in (lambda: get_extractor("vgg"), lambda: resize_for("vgg"), lambda: images_to_features("vgg", image),
                 lambda: folder_features(png_dirs[0], "vgg"), lambda: folder_fid(*png_dirs, "vgg")):
        with pytest.raises(ValueError, match=r"extractor: unknown name 'vgg' \(known: inception, digits, shapes, toy2d\)"):
            call()
    with pytest.raises(ValueError, match="'toy2d' works on points"):
        resize_for("toy2d")


def test_digits_extractor_takes_clean_fid_batches(digits_real):
    model = get_extractor("digits")
    batch = torch.from_numpy(np.repeat(((digits_real[:10] + 1) * 127.5).round().numpy(), 3, axis=1))  # [B,3,16,16]
    with torch.no_grad():
        feats = model(batch)
        assert feats.shape == (10, EXTRACTORS["digits"].dims)
        assert torch.equal(model(batch), feats)  # deterministic
        big = model(torch.nn.functional.interpolate(batch, size=(32, 32), mode="nearest"))  # resized inside
    assert big.shape == feats.shape and torch.isfinite(big).all()


def test_shapes_extractor_separates_scenes_by_what_they_show():
    from core.shapes import evaluation_scenes, render

    scenes = evaluation_scenes("shapes-test", 64)
    batch = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float()  # [B,3,32,32] 0..255
    model = get_extractor("shapes")
    with torch.no_grad():
        feats = model(batch)
        again = model(batch[:8].flip(0))
    assert feats.shape == (64, EXTRACTORS["shapes"].dims) and torch.isfinite(feats).all()
    torch.testing.assert_close(again, feats[:8].flip(0), rtol=0, atol=1e-5)  # per image, whatever the batch
    # Two renders of one scene share their features; different scenes do not.
    assert torch.equal(model(batch[:1]), model(batch[:1].clone()))
    assert (feats[0] - feats[1]).abs().max() > 1e-3


def test_features_are_deterministic_and_independent_of_batch_size(digits_noisy):
    first = images_to_features("digits", digits_noisy)
    assert np.array_equal(first, images_to_features("digits", digits_noisy))
    np.testing.assert_allclose(images_to_features("digits", digits_noisy, batch_size=7), first, atol=1e-5, rtol=0)


def test_toy2d_features_are_the_coordinates():
    pts = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(get_extractor("toy2d")(pts), pts)
    np.testing.assert_array_equal(images_to_features("toy2d", pts), pts.numpy())
    with pytest.raises(ValueError, match=r"toy2d extractor: expected points \[B, 2\]"):
        get_extractor("toy2d")(torch.zeros(4, 3))


def test_inception_without_weights_fails_at_once_saying_what_to_put_where(tmp_path):
    start = time.perf_counter()
    with pytest.raises(InceptionWeightsMissing) as info:
        get_extractor("inception", weights_dir=tmp_path)
    assert time.perf_counter() - start < 1.0
    assert isinstance(info.value, FileNotFoundError)
    assert INCEPTION_FILE in str(info.value) and str(tmp_path) in str(info.value)


class _StandInLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))


class _StandInInception(nn.Module):
    """What clean-fid's InceptionV3W needs of the torchscript file: `layers` and forward(x, return_features)."""

    def __init__(self):
        super().__init__()
        self.layers = _StandInLayers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers(x)


def test_inception_wiring_on_a_stand_in_file(tmp_path, png_dirs, digits_real):
    # The real 100 MB file cannot be fetched here; a scripted stand-in checks the path, the 299 clean resize and
    # the [-1, 1] normalisation run as clean-fid runs them, and that in-memory features equal the folder's.
    torch.manual_seed(0)
    torch.jit.script(_StandInInception()).save(str(tmp_path / INCEPTION_FILE))
    model = get_extractor("inception", weights_dir=tmp_path)
    from_memory = images_to_features(model, digits_real[:20])
    assert from_memory.shape == (20, 2048)
    subset = tmp_path / "subset"
    subset.mkdir()
    for i in range(20):
        (subset / f"{i:04d}.png").write_bytes((png_dirs[0] / f"{i:04d}.png").read_bytes())
    from_folder = folder_features(subset, "inception", weights_dir=tmp_path)
    np.testing.assert_allclose(from_memory, from_folder, atol=1e-5, rtol=0)
