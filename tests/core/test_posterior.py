"""The forward-process posterior q(z_s | z_t, x) (docs/methods.md#posterior; tests in docs/methods.md#shared-math-tests)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from core.posterior import marginal_sample, posterior_coefficients, posterior_sample
from core.samplers import ddim_step
from core.schedules import CosineSchedule, DiscreteSchedule

F64 = torch.float64

COSINE = CosineSchedule()
DISCRETE = DiscreteSchedule(DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod)
N1 = 999  # index grid step of DISCRETE: t = i / 999

PAIRS = {
    "cosine": (COSINE, [(0.05, 0.1), (0.1, 0.9), (0.3, 0.5), (0.5, 0.95), (0.7, 0.72), (0.2, 0.999)]),
    "discrete": (DISCRETE, [(10 / N1, 50 / N1), (100 / N1, 500 / N1), (400 / N1, 420 / N1), (0.0, 999 / N1),
                            (700 / N1, 990 / N1)]),
}


def _brute_force(schedule, s: float, t: float):
    """Condition the joint Gaussian (z_s, z_t | x) built from the two-stage forward process.

    z_s = alpha_s x + sigma_s e1,  z_t = alpha_{t|s} z_s + sigma_{t|s} e2, so with A = [[sigma_s, 0],
    [alpha_{t|s} sigma_s, sigma_{t|s}]] the covariance is A A^T and the means are (alpha_s x, alpha_t x).
    """
    a_s, s_s = float(schedule.alpha(s)), float(schedule.sigma(s))
    a_t, s_t = float(schedule.alpha(t)), float(schedule.sigma(t))
    a_ts = a_t / a_s
    s_ts = math.sqrt(s_t**2 - a_ts**2 * s_s**2)
    A = torch.tensor([[s_s, 0.0], [a_ts * s_s, s_ts]], dtype=F64)
    cov = A @ A.T
    c_z = cov[0, 1] / cov[1, 1]
    # E[z_s | z_t, x] = alpha_s x + c_z (z_t - E[z_t | x]) with E[z_t | x] = alpha_{t|s} alpha_s x.
    c_x = a_s - c_z * a_ts * a_s
    var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    return c_z, c_x, var


@pytest.mark.parametrize("name", PAIRS)
def test_coefficients_match_gaussian_conditioning(name):
    schedule, pairs = PAIRS[name]
    for s, t in pairs:
        got = posterior_coefficients(schedule, s, t)
        want = _brute_force(schedule, s, t)
        for label, g, w in zip(("c_z", "c_x", "var"), got, want):
            assert g.dtype == F64
            # Pairs are separated enough that 1 - kappa >= ~1e-2, so the brute-force subtraction
            # cov00 - cov01^2 / cov11 loses at most ~2 digits: 1e-12 relative still holds with margin.
            torch.testing.assert_close(g, w, rtol=1e-12, atol=0, msg=f"{name} {label} at (s, t) = ({s}, {t})")


def test_coefficients_per_example_tensors():
    s = torch.tensor([0.1, 0.3, 0.0, 0.6], dtype=F64)
    t = torch.tensor([0.2, 0.9, 0.5, 1.0], dtype=F64)
    c_z, c_x, var = posterior_coefficients(COSINE, s, t)
    assert c_z.shape == c_x.shape == var.shape == (4,)
    for i in range(4):
        for batched, scalar in zip((c_z, c_x, var), posterior_coefficients(COSINE, float(s[i]), float(t[i]))):
            torch.testing.assert_close(batched[i], scalar, rtol=1e-15, atol=0)


# -- edge cases -------------------------------------------------------------------------------------------

def _consistency(schedule, s, t, c_z, c_x, var):
    """Marginalising z_t ~ N(alpha_t x, sigma_t^2) must give back q(z_s | x) = N(alpha_s x, sigma_s^2)."""
    a_s, s_s = schedule.alpha(s), schedule.sigma(s)
    a_t, s_t = schedule.alpha(t), schedule.sigma(t)
    # O(1) quantities in float64: 1e-12 absolute is ~1e4 ulp.
    torch.testing.assert_close(c_z * a_t + c_x, a_s, rtol=0, atol=1e-12)
    torch.testing.assert_close(c_z**2 * s_t**2 + var, s_s**2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("t", [1e-6, 0.3, 0.999, 1.0])
def test_s_zero_gives_x(t):
    c_z, c_x, var = posterior_coefficients(COSINE, 0.0, t)
    assert (float(c_z), float(c_x), float(var)) == (0.0, 1.0, 0.0)


@pytest.mark.parametrize("s", [1e-6, 0.2, 0.5, 0.9, 0.999999])
def test_t_one_gives_marginal(s):
    c_z, c_x, var = posterior_coefficients(COSINE, s, 1.0)
    assert float(c_z) == 0.0
    # kappa = exp(-inf) = 0 exactly, so these are the marginal's coefficients up to ~1 ulp.
    torch.testing.assert_close(c_x, COSINE.alpha(s), rtol=1e-15, atol=0)
    torch.testing.assert_close(var, COSINE.sigma(s) ** 2, rtol=1e-15, atol=0)


@pytest.mark.parametrize("s", [1e-3, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999 - 1e-6])
def test_tiny_gap_is_finite(s):
    t = s + 1e-6
    c_z, c_x, var = posterior_coefficients(COSINE, s, t)
    for v in (c_z, c_x, var):
        assert torch.isfinite(v)
    assert float(var) >= 0.0
    # c_x = alpha_s (1 - kappa) <= alpha_s (lambda_s - lambda_t), and |dlambda/dt| = 2 pi / sin(pi t) on the
    # cosine schedule, so the gap bounds it by the largest slope on [s, t] times 1e-6 (1 % slack for round-off).
    slope = 2 * math.pi / min(math.sin(math.pi * s), math.sin(math.pi * t))
    assert 0.0 < float(c_x) <= float(COSINE.alpha(s)) * slope * 1e-6 * 1.01
    _consistency(COSINE, torch.tensor(s, dtype=F64), torch.tensor(t, dtype=F64), c_z, c_x, var)
    if 0.1 <= s <= 0.9:
        # log c_z = log(alpha_t / sigma_t^2) - log(alpha_s / sigma_s^2) has slope (pi/2)(tan + 2 cot) <= ~31
        # on [0.1, 0.9], so |c_z - 1| <= ~3e-5 for a 1e-6 gap.
        assert abs(float(c_z) - 1.0) < 1e-4


@pytest.mark.parametrize("name", PAIRS)
def test_marginal_consistency_on_pairs(name):
    schedule, pairs = PAIRS[name]
    for s, t in pairs:
        s_, t_ = torch.tensor(s, dtype=F64), torch.tensor(t, dtype=F64)
        _consistency(schedule, s_, t_, *posterior_coefficients(schedule, s_, t_))


# -- Monte Carlo: forward pairs vs posterior pairs --------------------------------------------------------

def _mean_cov_stats(a: torch.Tensor, b: torch.Tensor):
    """(statistics, standard errors) of mean(a), mean(b), var(a), var(b), cov(a, b) from one sample set."""
    n = a.numel()
    da, db = a - a.mean(), b - b.mean()
    terms = [a, b, da**2, db**2, da * db]
    stats = torch.stack([x.mean() for x in terms])
    se = torch.stack([x.std() / math.sqrt(n) for x in terms])
    return stats, se


def _pair_sets(schedule, s: float, t: float, x: float, n: int, seed: int, marginal: bool = False):
    g = torch.Generator().manual_seed(seed)
    e1, e2, e3, e4 = torch.randn(4, n, generator=g, dtype=F64)
    a_s, s_s = float(schedule.alpha(s)), float(schedule.sigma(s))
    a_t, s_t = float(schedule.alpha(t)), float(schedule.sigma(t))
    a_ts = a_t / a_s
    s_ts = math.sqrt(s_t**2 - a_ts**2 * s_s**2)
    # Forward pairs: two-stage noising.
    z_s = a_s * x + s_s * e1
    z_t = a_ts * z_s + s_ts * e2
    # Independent posterior pairs: z_t' ~ q(z_t | x), then z_s' ~ q(z_s | z_t', x).
    z_t2 = a_t * x + s_t * e3
    xs = torch.full((n,), x, dtype=F64)
    if marginal:  # a deliberately wrong re-noising (ignores z_t): the test statistic must catch it
        z_s2 = marginal_sample(schedule, xs, s, e4)
    else:
        z_s2 = posterior_sample(schedule, z_t2, xs, s, t, e4)
    return (z_s, z_t), (z_s2, z_t2)


def _max_z_score(fwd, post):
    (sf, ef), (sp, ep) = _mean_cov_stats(*fwd), _mean_cov_stats(*post)
    return float(((sf - sp).abs() / torch.sqrt(ef**2 + ep**2)).max())


@pytest.mark.parametrize("schedule,s,t", [(COSINE, 0.3, 0.7), (COSINE, 0.6, 0.65), (COSINE, 0.2, 1.0),
                                          (DISCRETE, 200 / N1, 600 / N1)])
def test_monte_carlo_posterior_pairs_match_forward_pairs(schedule, s, t):
    fwd, post = _pair_sets(schedule, s, t, x=0.7, n=100_000, seed=42)
    # Two independent sample sets: each statistic's difference has SE sqrt(se_f^2 + se_p^2). 4 SE leaves a
    # false-alarm rate of ~6e-5 per statistic (5 per case), and the seed is fixed.
    assert _max_z_score(fwd, post) < 4.0


def test_monte_carlo_detects_marginal_renoising():
    # Negative control: marginal re-noising has the right z_s marginal but Cov(z_s, z_t) = 0.
    fwd, post = _pair_sets(COSINE, 0.3, 0.7, x=0.7, n=100_000, seed=42, marginal=True)
    assert _max_z_score(fwd, post) > 4.0


# -- samplers reuse the posterior -------------------------------------------------------------------------

def test_ddim_eta_one_equals_posterior_sample():
    g = torch.Generator().manual_seed(0)
    n = 32
    t = torch.rand(n, generator=g, dtype=F64) * 0.95 + 0.05
    t[:4] = 1.0                                  # include pure-noise starts
    s = t * torch.rand(n, generator=g, dtype=F64)
    s[4:8] = 0.0                                 # and final steps to s = 0
    z_t, x0, noise = torch.randn(3, n, 2, generator=g, dtype=F64)
    got = ddim_step(COSINE, z_t, x0, s, t, 1.0, noise)
    want = posterior_sample(COSINE, z_t, x0, s, t, noise)
    # Different but equivalent algebra (sqrt(sigma_s^2 - var) eps_hat vs c_z z_t + c_x x) in float64 with
    # coefficients <= ~1/sigma_t ~ 20: round-off ~1e-14.
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_ddim_eta_zero_and_partial_noise():
    g = torch.Generator().manual_seed(1)
    n = 16
    t = torch.rand(n, generator=g, dtype=F64) * 0.9 + 0.1
    s = t * 0.5
    z_t, x0, noise = torch.randn(3, n, 2, generator=g, dtype=F64)
    a_s, s_s, a_t, s_t = COSINE.alpha(s)[:, None], COSINE.sigma(s)[:, None], COSINE.alpha(t)[:, None], \
        COSINE.sigma(t)[:, None]
    eps_hat = (z_t - a_t * x0) / s_t
    torch.testing.assert_close(ddim_step(COSINE, z_t, x0, s, t, 0.0, None), a_s * x0 + s_s * eps_hat,
                               rtol=0, atol=1e-12)
    # eta = 0.5: the injected noise has standard deviation 0.5 * sqrt(posterior variance).
    var = posterior_coefficients(COSINE, s, t)[2][:, None]
    diff = ddim_step(COSINE, z_t, x0, s, t, 0.5, noise) - ddim_step(COSINE, z_t, x0, s, t, 0.5, torch.zeros_like(noise))
    torch.testing.assert_close(diff, 0.5 * var.sqrt() * noise, rtol=0, atol=1e-12)


def test_marginal_sample():
    g = torch.Generator().manual_seed(2)
    x, noise = torch.randn(2, 8, 3, 4, generator=g, dtype=F64)
    t = torch.linspace(0, 1, 8, dtype=F64)
    want = COSINE.alpha(t)[:, None, None] * x + COSINE.sigma(t)[:, None, None] * noise
    torch.testing.assert_close(marginal_sample(COSINE, x, t, noise), want, rtol=0, atol=0)
