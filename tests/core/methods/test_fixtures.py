"""The method-test fixtures themselves: F2's fit to the exact ring denoiser (METHODS.md §10, F2)."""

from __future__ import annotations

import math

import torch

from core.nets import parameter_hash


def test_f2_fixture_quality(f2, capsys):
    """F2 here is cut down for speed: per-coordinate RMS ~0.086 over t ~ U(0.001, 1) (spec acceptance for the full
    F2 is < 0.05). Enough for plumbing tests; this bound only catches a broken fit."""
    with capsys.disabled():
        print(f"\nF2 fixture: RMS {f2.rms:.4f} per coordinate ({f2.rms_norm:.4f} as a 2-D norm), {f2.seconds:.1f} s")
    assert math.isfinite(f2.rms) and f2.rms < 0.15
    den = f2.denoiser
    assert not den.training and not any(p.requires_grad for p in den.parameters())
    assert all(p.dtype == torch.float32 for p in den.parameters())
    assert len(parameter_hash(den)) == 64
