"""The method-test fixtures themselves: the network teacher's fit to the exact ring denoiser (docs/methods.md#fixtures)."""

from __future__ import annotations

import math

import torch

from core.nets import parameter_hash


def test_network_teacher_fixture_fits_the_ring(network_teacher, capsys):
    """The network teacher here is cut down for speed: per-coordinate RMS ~0.086 over t ~ U(0.001, 1) (a full-size
    one must reach < 0.05). Enough for plumbing tests; this bound only catches a broken fit."""
    net = network_teacher
    with capsys.disabled():
        print(f"\nnetwork teacher: RMS {net.rms:.4f} per coordinate ({net.rms_norm:.4f} as a 2-D norm), {net.seconds:.1f} s")
    assert math.isfinite(net.rms) and net.rms < 0.15
    den = net.denoiser
    assert not den.training and not any(p.requires_grad for p in den.parameters())
    assert all(p.dtype == torch.float32 for p in den.parameters())
    assert len(parameter_hash(den)) == 64
