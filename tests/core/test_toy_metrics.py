"""The toy2d yardsticks on constructed cases."""

import pytest
import torch

from core.gmm import ring
from core.toy_metrics import energy_distance, mode_scores, sliced_w2, toy_scores


def test_distances_vanish_on_identical_sets_and_grow_with_a_shift():
    x = torch.randn(512, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert energy_distance(x, x) == pytest.approx(0, abs=1e-12)
    assert sliced_w2(x, x) == pytest.approx(0, abs=1e-12)
    # A pure translation by d moves every 1-D projection by <u, d>: sliced W2 is the RMS of those over directions.
    d = torch.tensor([0.5, 0.0], dtype=torch.float64)
    assert 0.2 < sliced_w2(x, x + d) < 0.5
    assert energy_distance(x, x + d) < energy_distance(x, x + 2 * d)


def test_sliced_w2_refuses_unequal_sizes():
    with pytest.raises(ValueError, match="equal sample counts"):
        sliced_w2(torch.zeros(3, 2), torch.zeros(4, 2))


def test_mode_scores_count_modes_and_off_mode_samples():
    mixture = ring()
    # 50 points on each of modes 0..2, 50 at the origin (far from every mode), none on modes 3..7.
    x = torch.cat([mixture.means[:3].repeat_interleave(50, 0), torch.zeros(50, 2, dtype=torch.float64)])
    scores = mode_scores(x, mixture)
    assert scores["covered"] == 3 and scores["quality"] == pytest.approx(0.75) and scores["min_mode_share"] == 0
    assert scores["shares"][:3] == pytest.approx([0.25] * 3)


def test_exact_samples_score_near_the_floor_and_a_collapse_far_from_it():
    mixture = ring()
    exact = toy_scores(mixture.sample(4096, torch.Generator().manual_seed(7)), mixture)
    collapsed = toy_scores(torch.zeros(4096, 2), mixture)
    assert exact["covered"] == 8 and exact["quality"] > 0.98
    assert collapsed["covered"] == 0 and collapsed["energy"] > 100 * exact["energy"]
