"""Sample-quality metrics on feature vectors: Fréchet distance, kernel inception distance, precision/recall.

Pure math in float64 NumPy. Features come from a frozen classifier (`cnn.features`), so the numbers compare
models scored by the same feature network only. Inputs may be NumPy arrays or torch tensors of shape (N, D).
"""

from __future__ import annotations

from typing import Any

import numpy as np

DISTANCE_BLOCK = 2**24  # float64 entries per pairwise-distance block (128 MiB): rows = DISTANCE_BLOCK // N


def _as_float64(features: Any) -> np.ndarray:
    if hasattr(features, "detach"):
        features = features.detach().cpu().double().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {array.shape}")
    return array


def feature_stats(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), covariance (D, D)) of features (N, D), N >= 2, unbiased covariance."""
    array = _as_float64(features)
    if len(array) < 2:
        raise ValueError("need at least two feature vectors for a covariance")
    return array.mean(axis=0), np.cov(array, rowvar=False).reshape(array.shape[1], array.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues -> 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):
    |mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr((s1 s2)^1/2).

    tr((s1 s2)^1/2) is computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
    s1^1/2 s2 s1^1/2 (same spectrum as s1 s2): no complex sqrtm, stable for singular covariances."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError("mean and covariance shapes do not match")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return float(max(value, 0.0))


def frechet_distance_of_features(features1: Any, features2: Any) -> float:
    return frechet_distance(*feature_stats(features1), *feature_stats(features2))


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = (a.b / D + 1)^3 for equal-size samples x, y (m, D)."""
    m, dim = x.shape
    kxx = (x @ x.T / dim + 1.0) ** 3
    kyy = (y @ y.T / dim + 1.0) ** 3
    kxy = (x @ y.T / dim + 1.0) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.mean())


def kid(
    features1: Any, features2: Any, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel inception distance: (mean, std) of the unbiased polynomial-kernel MMD^2 over `subsets` random
    subsets of min(subset_size, N1, N2) items drawn without replacement from each set."""
    x, y = _as_float64(features1), _as_float64(features2)
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError("KID needs at least two feature vectors in each set")
    rng = np.random.default_rng(seed)
    values = [
        _polynomial_mmd2(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.clip(d2, 0.0, None)


def _knn_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from each point to its k-th nearest other point (N,)."""
    radii = np.empty(len(points))
    kth = min(k, len(points) - 1)  # index 0 of the sorted row is the point itself
    rows = max(1, DISTANCE_BLOCK // len(points))
    for start in range(0, len(points), rows):
        block = _squared_distances(points[start : start + rows], points)
        radii[start : start + len(block)] = np.partition(block, kth, axis=1)[:, kth]
    return radii


def _coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> float:
    """Fraction of queries inside at least one ball (manifold point, its k-NN radius)."""
    inside = 0
    rows = max(1, DISTANCE_BLOCK // len(manifold))
    for start in range(0, len(queries), rows):
        block = _squared_distances(queries[start : start + rows], manifold)
        inside += int((block <= radii[None, :]).any(axis=1).sum())
    return inside / len(queries)


def precision_recall(real: Any, fake: Any, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): precision = share of fake samples inside
    the real k-NN manifold (fidelity), recall = share of real samples inside the fake one (coverage)."""
    real_array, fake_array = _as_float64(real), _as_float64(fake)
    if len(real_array) < 2 or len(fake_array) < 2:
        raise ValueError("precision/recall needs at least two feature vectors in each set")
    precision = _coverage(real_array, _knn_radii(real_array, k), fake_array)
    recall = _coverage(fake_array, _knn_radii(fake_array, k), real_array)
    return precision, recall


def conditional_accuracy(logits: Any, labels: Any) -> float:
    """Share of samples classified as the class they were generated for: logits (N, K), labels (N,)."""
    if hasattr(logits, "detach"):
        logits = logits.detach().cpu().numpy()
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    logits, labels = np.asarray(logits), np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("no samples")
    return float((logits.argmax(axis=1) == labels).mean())
