"""FID, KID and precision/recall/density/coverage on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from cleanfid.fid import kernel_distance

from core.metrics import fid_from_features, kid_from_features, prdc

# Two non-commuting 2-D Gaussians. For 2x2 matrices tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)), and S1 S2 has the
# eigenvalues of S1^1/2 S2 S1^1/2, so the Fréchet distance has a closed form with no matrix square root at all.
MU1, MU2 = np.array([0.0, 1.0]), np.array([1.5, -0.5])
S1 = np.array([[2.0, 0.6], [0.6, 1.0]])
S2 = np.array([[0.5, -0.3], [-0.3, 1.5]])


def closed_form_fid(mu1, s1, mu2, s2) -> float:
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def exact_moments(mu, sigma, n, rng) -> np.ndarray:
    """n samples whose sample mean and (ddof=1) covariance are exactly mu and sigma, up to rounding."""
    z = rng.standard_normal((n, len(mu)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whitened: sample covariance I
    return mu + z @ np.linalg.cholesky(sigma).T


def test_fid_equals_the_closed_form_given_exact_moments():
    rng = np.random.default_rng(0)
    f1, f2 = exact_moments(MU1, S1, 50, rng), exact_moments(MU2, S2, 80, rng)
    assert fid_from_features(f1, f2) == pytest.approx(closed_form_fid(MU1, S1, MU2, S2), abs=1e-9)


def test_fid_of_diagonal_gaussians_in_8d():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.2, 3.0, 8), rng.uniform(0.2, 3.0, 8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # commuting: sqrt per axis
    f1, f2 = exact_moments(mu1, np.diag(a), 100, rng), exact_moments(mu2, np.diag(b), 100, rng)
    assert fid_from_features(f1, f2) == pytest.approx(expected, abs=1e-9)


def test_fid_of_sampled_gaussians_is_close_to_the_closed_form():
    # FID estimated from n samples has a standard error of order 1/sqrt(n) and a bias of order (tr S1 + tr S2)/n
    # (the mean term's is exactly that; the covariance term's is of the same order). Ten replicates of n = 20,000
    # give the standard error of their mean from their own spread: allow 4 of them plus twice the bias scale.
    rng = np.random.default_rng(2)
    n, reps = 20_000, 10
    estimates = [fid_from_features(rng.multivariate_normal(MU1, S1, n), rng.multivariate_normal(MU2, S2, n))
                 for _ in range(reps)]
    tolerance = 4 * np.std(estimates, ddof=1) / np.sqrt(reps) + 2 * (np.trace(S1) + np.trace(S2)) / n
    assert abs(np.mean(estimates) - closed_form_fid(MU1, S1, MU2, S2)) < tolerance
    assert tolerance < 0.05  # the check is tight: the closed form is about 6.5


def test_fid_of_a_set_against_itself_is_zero():
    f = np.random.default_rng(3).normal(size=(500, 32)).astype(np.float32)
    assert abs(fid_from_features(f, f)) < 1e-6


def test_fid_rejects_bad_features():
    f = np.zeros((10, 4))
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid_from_features(f, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="2-D"):
        fid_from_features(f[0], f)
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(f[:1], f)
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(np.full((10, 4), np.nan), f)


def test_kid_of_identical_and_of_disjoint_sets():
    f = np.random.default_rng(4).normal(size=(300, 16))
    m, d = len(f), f.shape[1]
    # With X = Y the unbiased estimate is 2 (mean off-diagonal k - mean diagonal k) / m: zero up to O(1/m).
    bound = 2 * ((f * f).sum(1) / d + 1).max() ** 3 / m
    same = kid_from_features(f, f, num_subsets=3)  # subsets covering both sets: every one gives the same value
    assert abs(same) < bound
    far = kid_from_features(f, f + 10.0, num_subsets=3)
    assert far > 1000 * bound


def test_kid_of_two_samples_of_one_distribution_is_near_zero():
    rng = np.random.default_rng(5)
    f1, f2 = rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16))
    kid = kid_from_features(f1, f2, num_subsets=5, max_subset_size=500)
    assert abs(kid) < 0.01 < kid_from_features(f1, f2 + 0.5, num_subsets=5, max_subset_size=500)


def test_kid_equals_clean_fid_when_subsets_cover_both_sets():
    rng = np.random.default_rng(6)
    f1, f2 = rng.normal(size=(300, 8)), rng.normal(0.3, 1.0, size=(300, 8))
    assert kid_from_features(f1, f2) == pytest.approx(kernel_distance(f1, f2), rel=1e-9)


def test_kid_is_reproducible():
    rng = np.random.default_rng(7)
    f1, f2 = rng.normal(size=(400, 8)), rng.normal(size=(250, 8))
    assert kid_from_features(f1, f2, num_subsets=5) == kid_from_features(f1, f2, num_subsets=5)


def test_prdc_identical_and_disjoint_sets():
    real = np.random.default_rng(8).normal(size=(200, 8))
    same = prdc(real, real.copy(), k=5)
    assert (same["precision"], same["recall"], same["coverage"]) == (1.0, 1.0, 1.0)
    assert prdc(real, real + 100.0, k=5) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_half_on_the_manifold():
    real = np.random.default_rng(9).normal(size=(200, 8))
    fake = np.concatenate([real[:100], real[:100] + 100.0])
    assert prdc(real, fake, k=3)["precision"] == 0.5


def test_prdc_matches_the_definition():
    # Naeem et al. 2020, eqs. 1-4, written with loops on a small set.
    rng = np.random.default_rng(10)
    real, fake, k = rng.normal(size=(40, 3)), rng.normal(0.5, 1.2, size=(30, 3)), 4
    dist = np.linalg.norm(real[:, None] - fake[None], axis=-1)
    r_real = np.sort(np.linalg.norm(real[:, None] - real[None], axis=-1), 1)[:, k]  # column 0 is the point itself
    r_fake = np.sort(np.linalg.norm(fake[:, None] - fake[None], axis=-1), 1)[:, k]
    expected = {"precision": np.mean([any(dist[i, j] < r_real[i] for i in range(40)) for j in range(30)]),
                "recall": np.mean([any(dist[i, j] < r_fake[j] for j in range(30)) for i in range(40)]),
                "density": np.mean([sum(dist[i, j] < r_real[i] for i in range(40)) for j in range(30)]) / k,
                "coverage": np.mean([dist[i].min() < r_real[i] for i in range(40)])}
    got = prdc(real, fake, k=k)
    assert got == pytest.approx(expected, abs=1e-12)
    assert prdc(real, fake, k=k) == got  # deterministic


def test_prdc_rejects_k_too_large():
    f = np.zeros((5, 2))
    with pytest.raises(ValueError, match="prdc: k must be"):
        prdc(f, f, k=5)
