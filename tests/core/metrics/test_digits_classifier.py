"""The shipped digits classifier: its held-out accuracy, recomputed, and the training entry point."""

from __future__ import annotations

import json

import numpy as np
import torch

from core.data import digits_tensors
from core.metrics import digits_classifier as dc
from core.metrics.digits_classifier import WEIGHTS, DigitsExtractor, classify, digits_split, load_classifier


def test_split_is_fixed_stratified_and_disjoint():
    train, test = digits_split()
    assert (len(train), len(test)) == (1437, 360) and not set(train) & set(test)
    assert np.array_equal(test, digits_split()[1])
    counts = np.bincount(digits_tensors(16)[1].numpy()[test], minlength=10)
    assert counts.min() >= 35  # about 36 of each class


def test_shipped_classifier_accuracy_on_the_held_out_split():
    x, y = digits_tensors(16)
    test = torch.from_numpy(digits_split()[1])
    accuracy = float((classify(x[test]) == y[test].numpy()).mean())
    assert accuracy >= 0.95
    meta = json.loads(WEIGHTS.with_suffix(".json").read_text())["meta"]
    assert meta["test_accuracy"] == accuracy  # the record matches what the weights do
    assert meta["command"].startswith("python -m core.metrics.digits_classifier --install")


def test_training_entry_point_round_trips(tmp_path):
    model, report = dc.train_digits_classifier(seed=1, epochs=1)
    assert {"test_accuracy", "seed", "epochs", "params"} <= set(report) and report["seed"] == 1
    assert 10_000 < report["params"] < 100_000
    path = dc.save_classifier(model, report, tmp_path / "c.safetensors")
    batch = torch.rand(4, 3, 16, 16) * 255
    with torch.no_grad():
        assert torch.equal(DigitsExtractor(load_classifier(path))(batch), DigitsExtractor(model)(batch))
