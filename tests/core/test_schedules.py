"""VP schedules (docs/methods.md#schedules): identities, monotonicity, inverses, endpoints, rounding."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from core.schedules import CosineSchedule, DiscreteSchedule, time_grid

F64 = torch.float64
N_TRAIN = 1000


def _ddpm_alphas_cumprod(beta_schedule: str) -> torch.Tensor:
    return DDPMScheduler(num_train_timesteps=N_TRAIN, beta_schedule=beta_schedule).alphas_cumprod


@pytest.fixture(scope="module", params=["linear", "squaredcos_cap_v2"])
def discrete(request) -> DiscreteSchedule:
    return DiscreteSchedule(_ddpm_alphas_cumprod(request.param))


@pytest.fixture(scope="module")
def cosine() -> CosineSchedule:
    return CosineSchedule()


def _grid(n: int = 2001) -> torch.Tensor:
    return torch.linspace(0.0, 1.0, n, dtype=F64)


def _index_grid(s: DiscreteSchedule) -> torch.Tensor:
    return torch.arange(s.num_steps, dtype=F64) / (s.num_steps - 1)


# -- alpha^2 + sigma^2 = 1 --------------------------------------------------------------------------------

def test_cosine_variance_preserving(cosine):
    t = _grid()
    a, s = cosine.alpha(t), cosine.sigma(t)
    assert a.dtype == F64 and s.dtype == F64
    # float64 cos^2 + sin^2 is 1 up to a few ulp (~2e-16); 1e-12 leaves a wide margin.
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(t), rtol=0, atol=1e-12)


def test_discrete_variance_preserving(discrete):
    t = torch.cat([_grid(), _index_grid(discrete)])
    a, s = discrete.alpha(t), discrete.sigma(t)
    # sqrt(acp)^2 + sqrt(1 - acp)^2 in float64: a few ulp of error.
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(t), rtol=0, atol=1e-12)


# -- log-SNR: monotone, consistent, invertible -----------------------------------------------------------

def test_cosine_log_snr_strictly_decreasing(cosine):
    t = _grid(4001)[1:-1]  # open interval (0, 1): finite values
    lam = cosine.log_snr(t)
    assert torch.isfinite(lam).all()
    assert bool((lam[1:] < lam[:-1]).all())


def test_discrete_log_snr_monotone(discrete):
    lam = discrete.log_snr(_grid(5001))
    assert bool((lam[1:] <= lam[:-1]).all()), "non-increasing on any grid"
    lam_idx = discrete.log_snr(_index_grid(discrete))
    assert bool((lam_idx[1:] < lam_idx[:-1]).all()), "strictly decreasing on the index grid"


def test_cosine_log_snr_matches_definition(cosine):
    t = torch.linspace(1e-3, 1 - 1e-3, 999, dtype=F64)
    a, s = cosine.alpha(t), cosine.sigma(t)
    # |lambda| <= ~15 here; both forms are accurate to ~1e-14 absolute, so 1e-9 is loose but can still fail
    # on any formula error (a wrong factor changes lambda by O(1)).
    torch.testing.assert_close(cosine.log_snr(t), torch.log(a**2 / s**2), rtol=0, atol=1e-9)


def test_discrete_log_snr_matches_definition(discrete):
    t = torch.cat([_grid(), _index_grid(discrete)])
    a, s = discrete.alpha(t), discrete.sigma(t)
    torch.testing.assert_close(discrete.log_snr(t), torch.log(a**2 / s**2), rtol=0, atol=1e-9)


def test_cosine_t_from_log_snr_inverts(cosine):
    t = torch.linspace(1e-4, 1 - 1e-4, 1001, dtype=F64)
    # atan(exp(-lambda/2)) is well conditioned; 1e-9 in t is far above float64 round-off (~1e-15).
    torch.testing.assert_close(cosine.t_from_log_snr(cosine.log_snr(t)), t, rtol=0, atol=1e-9)


def test_discrete_t_from_log_snr_exact_on_index_grid(discrete):
    t = _index_grid(discrete)
    assert torch.equal(discrete.t_from_log_snr(discrete.log_snr(t)), t)


def test_discrete_t_from_log_snr_picks_nearest_level(discrete):
    lam = discrete._log_snr
    # Midpoints nudged toward the lower index, and values beyond both ends.
    mid = 0.5 * (lam[1:] + lam[:-1])
    nudge = 1e-6 * (lam[:-1] - lam[1:])
    t = _index_grid(discrete)
    assert torch.equal(discrete.t_from_log_snr(mid + nudge), t[:-1])
    assert torch.equal(discrete.t_from_log_snr(mid - nudge), t[1:])
    assert float(discrete.t_from_log_snr(lam[0] + 5.0)) == 0.0
    assert float(discrete.t_from_log_snr(lam[-1] - 5.0)) == 1.0


# -- endpoints and rounding -------------------------------------------------------------------------------

def test_cosine_endpoints_exact(cosine):
    assert float(cosine.alpha(1.0)) == 0.0
    assert float(cosine.sigma(0.0)) == 0.0
    assert float(cosine.alpha(0.0)) == 1.0
    assert float(cosine.sigma(1.0)) == 1.0
    assert float(cosine.log_snr(0.0)) == math.inf
    assert float(cosine.log_snr(1.0)) == -math.inf
    assert float(cosine.t_from_log_snr(math.inf)) == 0.0
    assert float(cosine.t_from_log_snr(-math.inf)) == 1.0


def test_discrete_rounds_to_nearest_index(discrete):
    g = torch.Generator().manual_seed(0)
    t = torch.rand(4000, generator=g, dtype=F64)
    n = discrete.num_steps - 1
    t_idx = torch.round(t * n) / n
    assert torch.equal(discrete.alpha(t), discrete.alpha(t_idx))
    assert torch.equal(discrete.sigma(t), discrete.sigma(t_idx))
    assert torch.equal(discrete.alpha(t), discrete.alphas_cumprod[torch.round(t * n).long()].sqrt())
    assert torch.equal(discrete.model_time(t), torch.round(t * n).long())


# -- config round-trip and validation ---------------------------------------------------------------------

@pytest.mark.parametrize("acp", [
    [0.9, 0.95, 0.5],        # increases
    [0.9, 0.9, 0.5],         # not strictly decreasing
    [1.0, 0.5, 0.1],         # 1 is outside (0, 1)
    [0.9, 0.5, 0.0],         # 0 is outside (0, 1)
    [0.9, 0.5, -0.1],
    [1.5, 0.5],
    [0.9, float("nan")],
    [0.5],                   # fewer than 2 entries
])
def test_discrete_rejects_bad_alphas_cumprod(acp):
    with pytest.raises(ValueError):
        DiscreteSchedule(acp)


def test_cosine_rejects_bad_t_max():
    for t_max in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError):
            CosineSchedule(t_max=t_max)


# -- time grid --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", [CosineSchedule(), CosineSchedule(t_max=0.98)])
@pytest.mark.parametrize("k", [1, 2, 7, 50])
def test_time_grid(schedule, k):
    g = time_grid(schedule, k)
    assert g.dtype == F64
    assert g.shape == (k + 1,)
    assert float(g[0]) == schedule.t_max
    assert float(g[-1]) == 0.0
    assert bool((g[1:] < g[:-1]).all())


def test_time_grid_rejects_zero_steps():
    with pytest.raises(ValueError):
        time_grid(CosineSchedule(), 0)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6, 7, 8, 50])
def test_a_discrete_grid_is_the_lcm_schedulers_and_trailing_where_k_divides_n(k):
    from diffusers import DDPMScheduler, LCMScheduler

    schedule = DiscreteSchedule(_ddpm_alphas_cumprod("linear"))
    levels = schedule.index(time_grid(schedule, k)[:-1]).tolist()
    lcm = LCMScheduler(original_inference_steps=1000)
    lcm.set_timesteps(k)
    assert levels == lcm.timesteps.tolist()
    if 1000 % k == 0:
        ddpm = DDPMScheduler(timestep_spacing="trailing")
        ddpm.set_timesteps(k)
        assert levels == ddpm.timesteps.tolist()
    assert levels[0] == 999 and time_grid(schedule, k)[-1] == 0.0
