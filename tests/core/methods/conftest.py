"""Fixtures for the method tests (docs/methods.md#fixtures): the analytic ring and a small network teacher (an MLP
regressed onto the ring's exact denoiser).

The network teacher here is cut down: an MLP(hidden=64, depth=2) regressed for a few hundred Adam steps onto the exact
ring denoiser (`core.gmm.fit_to_mixture`). It is good enough for plumbing and bookkeeping tests (backward simulation,
TTUR, the plug-in contract), and its RMS error is above the 0.05 bound a full-size one meets;
`test_network_teacher_fixture_fits_the_ring` records it. The outcome tests (test_outcomes.py) use the shipped
`toy2d-ring` teacher instead, which meets the bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch

from core.denoisers import NetworkDenoiser
from core.gmm import GaussianMixture, GMMDenoiser, fit_to_mixture, ring, rms_vs_exact
from core.nets import MLP
from core.posterior import marginal_sample
from core.schedules import CosineSchedule

NET_STEPS = 800      # ~2-3 s with OMP_NUM_THREADS=1; RMS ~0.08 per coordinate, plenty for plumbing tests
NET_BATCH = 256
NET_LR = 3e-3
NET_T_LO = 1e-3      # regressed over t in [0.001, 1] (docs/methods.md#fixtures)


@dataclass
class NetworkTeacher:
    denoiser: NetworkDenoiser   # frozen, eval, float32
    rms: float                  # per-coordinate RMS error vs the exact denoiser over t ~ U(0.001, 1)
    rms_norm: float             # the same as an RMS of the 2-D error vector's norm
    seconds: float


def shifted_mixture(mixture: GaussianMixture, delta) -> GaussianMixture:
    """The mixture translated by delta: same stds and weights, means + delta."""
    delta = torch.as_tensor(delta, dtype=torch.float64)
    return GaussianMixture(mixture.means.double() + delta, mixture.stds.clone(), mixture.weights.clone())


def _f2_denoiser() -> NetworkDenoiser:
    return NetworkDenoiser(MLP(dim=2, hidden=64, depth=2), CosineSchedule(), "v_prediction", (2,), time_input="log_snr")


@pytest.fixture(scope="session")
def ring_mixture() -> GaussianMixture:
    return ring()


@pytest.fixture(scope="session")
def network_teacher(ring_mixture) -> NetworkTeacher:
    """The network teacher: the MLP's v-output regressed onto the v of the exact denoiser at noised ring samples (seeded)."""
    t0 = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        den = _f2_denoiser()
    den = fit_to_mixture(den, ring_mixture, steps=NET_STEPS, lr=NET_LR, batch=NET_BATCH, t_lo=NET_T_LO, seed=0)
    rms, rms_norm = rms_vs_exact(den, ring_mixture, t_lo=NET_T_LO)
    return NetworkTeacher(den, rms, rms_norm, time.perf_counter() - t0)


@pytest.fixture(scope="session")
def mlp_teacher(network_teacher) -> NetworkDenoiser:
    """The frozen network teacher. Methods keep a reference to it (not a copy): never modify it in a test."""
    return network_teacher.denoiser


@pytest.fixture(scope="session")
def mlp_teacher64(network_teacher) -> NetworkDenoiser:
    """A frozen float64 copy of the network teacher: methods built on it draw float64 noise (Method reads the teacher's dtype), for
    the tight-tolerance EMD / Diff-Instruct tests. Shared, like `mlp_teacher`: never modify it in a test."""
    import copy

    return copy.deepcopy(network_teacher.denoiser).double().eval().requires_grad_(False)


class LearnableMixtureDenoiser(GMMDenoiser):
    """A Gaussian-mixture denoiser with trainable means and stds (fixed weights): the exact answer lies in this family,
    so a short DSM fit reaches it. Its parameters are float64, so it can be injected as a method's A."""

    def __init__(self, init: GaussianMixture, schedule):
        super().__init__(init, schedule)
        self.weights = init.weights.clone()
        self.means = torch.nn.Parameter(init.means.clone())
        self.log_std = torch.nn.Parameter(init.stds.log())

    def forward(self, z_t, t, cond=None):
        self.mixture = GaussianMixture(self.means, self.log_std.exp(), self.weights)
        return super().forward(z_t, t, cond)


_DSM_FITS: dict = {}


def dsm_fitted_ring(delta, steps: int = 300, batch: int = 512) -> LearnableMixtureDenoiser:
    """The statistical gradient checks' A: a LearnableMixtureDenoiser, started from the same jittered ring for every
    delta, fitted by EDM-weighted denoising score matching (sigma_d 1.42) on exact samples of the ring shifted by
    delta. Seeded and cached per delta (frozen, eval): never modify the returned module."""
    from core.losses import fake_score_loss
    from core.time_sampling import edm_weight

    key = (tuple(float(v) for v in delta), steps, batch)
    if key not in _DSM_FITS:
        base = ring()
        sched = CosineSchedule()
        data = shifted_mixture(base, delta)
        jitter = 0.15 * torch.randn(8, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        init = GaussianMixture(base.means + jitter, torch.full((8,), 0.2, dtype=torch.float64), base.weights.clone())
        fake = LearnableMixtureDenoiser(init, sched)
        opt = torch.optim.Adam(fake.parameters(), lr=1e-2)
        lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        gen = torch.Generator().manual_seed(1)
        for _ in range(steps):
            x = data.sample(batch, gen)
            t = 1e-3 + (1.0 - 1e-3) * torch.rand(batch, generator=gen, dtype=torch.float64)
            z_t = marginal_sample(sched, x, t, torch.randn(batch, 2, generator=gen, dtype=torch.float64))
            loss = fake_score_loss(fake(z_t, t), x, edm_weight(sched.log_snr(t), 1.42))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lr_sched.step()
        _DSM_FITS[key] = fake.eval().requires_grad_(False)
    return _DSM_FITS[key]
