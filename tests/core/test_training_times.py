"""Teacher training times: uniform by default (bit-exact with the plain draw), shifted towards high noise on request."""

from __future__ import annotations

import math

import pytest
import torch

from core.specs import TrainConfig
from core.teachers.trainer import T_MIN, training_times

N = 40_000


def test_no_shift_is_the_plain_uniform_draw_bit_for_bit():
    got = training_times(64, torch.Generator().manual_seed(3), 1.0)
    u = torch.rand(64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(got, T_MIN + (1.0 - T_MIN) * u)


@pytest.mark.parametrize("shift", [0.5, 3.0])
def test_a_shift_moves_the_mass_as_its_formula_says(shift):
    t = training_times(N, torch.Generator().manual_seed(0), 1.0, shift)
    u = (t - T_MIN) / (1.0 - T_MIN)
    assert float(u.min()) >= 0.0 and float(u.max()) <= 1.0
    # P(shifted u > 0.9) = 1 - u0 where s u0 / (1 + (s - 1) u0) = 0.9, i.e. u0 = 0.9 / (s - 0.9 (s - 1)).
    expected = 1 - 0.9 / (shift - 0.9 * (shift - 1))
    sd = math.sqrt(expected * (1 - expected) / N)
    assert abs(float((u > 0.9).double().mean()) - expected) < 4 * sd  # 4 sd: a false alarm once in ~16,000 runs
    if shift > 1:
        assert expected > 0.2  # s = 3: a quarter of the draws in the top tenth, against a tenth without the shift


def test_the_knob_is_validated_and_defaults_to_uniform():
    assert TrainConfig().t_shift == 1.0
    with pytest.raises(ValueError, match="t_shift"):
        TrainConfig(t_shift=0)
