from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from worker.engine.metrics import (
    conditional_accuracy,
    feature_stats,
    frechet_distance,
    frechet_distance_of_features,
    kid,
    precision_recall,
)


def random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_frechet_distance_of_identical_gaussians_is_zero() -> None:
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), random_covariance(rng, 16)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form() -> None:
    # For diagonal covariances tr((s1 s2)^1/2) = sum sqrt(a_i b_i): FD = |dmu|^2 + sum (sqrt a - sqrt b)^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 1.0 + 4.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_scaled_covariance() -> None:
    # s2 = c s1 commutes with s1: tr((c s1^2)^1/2) = sqrt(c) tr(s1), so FD = tr(s1) (1 - sqrt(c))^2.
    rng = np.random.default_rng(1)
    sigma = random_covariance(rng, 8)
    mu = rng.normal(size=8)
    assert frechet_distance(mu, sigma, mu, 4.0 * sigma) == pytest.approx(np.trace(sigma), rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_and_survives_singular_covariances() -> None:
    rng = np.random.default_rng(2)
    s1, s2 = random_covariance(rng, 12), random_covariance(rng, 12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    reference = (
        (mu1 - mu2) @ (mu1 - mu2)
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    )
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)
    low_rank = rng.normal(size=(12, 3))
    singular = low_rank @ low_rank.T  # rank 3
    assert np.isfinite(frechet_distance(mu1, singular, mu2, singular))
    assert frechet_distance(mu1, singular, mu1, singular) == pytest.approx(0.0, abs=1e-7)


def test_feature_stats_and_fd_of_features_accept_tensors() -> None:
    features = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    mu, sigma = feature_stats(features)
    assert mu.shape == (4,) and sigma.shape == (4, 4) and mu.dtype == np.float64
    np.testing.assert_allclose(sigma, np.cov(features.double().numpy(), rowvar=False))
    assert frechet_distance_of_features(features, features) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance_of_features(features, features + 2.0) == pytest.approx(16.0, rel=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same_mean, same_std = kid(x, y, subsets=20, subset_size=200, seed=0)
    shifted_mean, _ = kid(x, y + 1.0, subsets=20, subset_size=200, seed=0)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert shifted_mean > 0.1 and shifted_mean > 20 * abs(same_mean)
    assert kid(x, y, subsets=5, subset_size=100, seed=7) == kid(x, y, subsets=5, subset_size=100, seed=7)


def test_precision_recall_extremes_and_a_hand_computed_case() -> None:
    rng = np.random.default_rng(4)
    real = rng.normal(size=(300, 6))
    assert precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)
    # k=1 radii of the real points 0, 1, 2, 10 are 1, 1, 1, 8: 0.5 and 5 are inside, 20 is not.
    line_real, line_fake = np.array([[0.0], [1.0], [2.0], [10.0]]), np.array([[0.5], [5.0], [20.0]])
    precision, recall = precision_recall(line_real, line_fake, k=1)
    assert precision == pytest.approx(2 / 3)
    # fake radii (k=1): 4.5, 4.5, 15 -> real 0, 1, 2 (near 0.5), 10 (near 5) all covered.
    assert recall == 1.0


def test_conditional_accuracy() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    assert conditional_accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75
    with pytest.raises(ValueError):
        conditional_accuracy(np.zeros((0, 2)), np.zeros(0))
