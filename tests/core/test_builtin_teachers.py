"""The shipped built-in teachers: weights present, loadable, frozen, and recorded (how they were produced)."""

from __future__ import annotations

import json

import pytest
import torch

from core.noise import seeded_noise
from core.samplers import sample
from core.specs import BUILTIN_TEACHERS
from core.teachers import load_teacher
from core.teachers.builtin import weights_path

# Trained network teachers shipped as one safetensors file; the text-to-image ones (shapes) ship as pipeline folders,
# tested in tests/core/test_shapes_teacher.py.
TRAINED = [name for name, info in BUILTIN_TEACHERS.items() if info.trainable and not info.is_text_to_image]


@pytest.mark.parametrize("name", TRAINED)
def test_shipped_weights_have_a_training_record(name):
    path = weights_path(name)
    assert path.is_file(), f"{name}: shipped weights missing at {path}"
    assert path.stat().st_size < 8 * 2**20, "shipped weights must stay small (a few MB)"
    meta = json.loads(path.with_suffix(".json").read_text())["meta"]
    record = meta["training"]
    info = BUILTIN_TEACHERS[name]
    # The record must describe the configuration the catalogue ships, so the README's command reproduces it.
    assert record["command"].startswith(f"distill-studio teachers train {name}")
    assert record["iterations"] == info.train.iterations == meta["step"]
    assert record["seed"] == info.train.seed
    assert record["cpu_minutes"] > 0


@pytest.mark.parametrize("name", TRAINED)
def test_shipped_teacher_loads_frozen_and_samples(name):
    info = BUILTIN_TEACHERS[name]
    teacher = load_teacher(name)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    if info.kind == "unet":
        # The catalogue's claim (1.1M parameters) is what was trained.
        assert 1.0e6 < sum(p.numel() for p in teacher.parameters()) < 1.2e6
    seeds = list(range(8))
    cond = torch.arange(8) % info.num_classes if info.num_classes else None
    x = sample(teacher, seeded_noise(seeds, info.data_shape), 4, cond)
    assert x.shape == (8, *info.data_shape)
    assert torch.isfinite(x).all()
    # Data live in [-1, 1] (digits) or within radius ~3 (toy2d); a broken load gives wild values.
    assert x.abs().max() < (1.5 if info.is_image else 4.0)
