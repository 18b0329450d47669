"""Fréchet distance between two sets of feature vectors: the formula of FID (Heusel et al. 2017, "GANs
Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium"), in any feature space.

Each set is summarised by the Gaussian with its mean μ and covariance Σ, and the distance is the
2-Wasserstein (Fréchet) distance between the two Gaussians (Dowson & Landau 1982):

    d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½)

The matrix square roots are taken in this symmetric form, with ``numpy.linalg.eigh`` of symmetric
positive semi-definite matrices (eigenvalues that round-off makes slightly negative count as 0), so no
scipy is needed and covariances of fewer samples than dimensions (rank-deficient) work too. Needs numpy only.
"""

from __future__ import annotations

import numpy as np


def gaussian_statistics(features) -> tuple:
    """``(mean, covariance)`` in float64 of ``features`` [N, D] (a numpy array or a torch tensor), N ≥ 2.

    The covariance is the unbiased sample covariance (divisor N − 1), as ``numpy.cov`` computes it.
    """
    array = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise ValueError(f"features must be a 2-D array [N, D] with N ≥ 2 samples and D ≥ 1 dimensions; "
                         f"got shape {tuple(array.shape)}: pass one feature vector per row")
    if not np.isfinite(array).all():
        raise ValueError("features contain NaN or infinite values: check the images they were computed from")
    return array.mean(axis=0), np.cov(array, rowvar=False).reshape(array.shape[1], array.shape[1])


def symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The principal square root of a symmetric positive semi-definite matrix, by ``eigh``."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance_from_statistics(mean_a, covariance_a, mean_b, covariance_b) -> float:
    """d² = ‖μ_a − μ_b‖² + tr(Σ_a) + tr(Σ_b) − 2 tr((Σ_a^½ Σ_b Σ_a^½)^½) for two Gaussians."""
    mean_a, mean_b = np.asarray(mean_a, dtype=np.float64), np.asarray(mean_b, dtype=np.float64)
    covariance_a, covariance_b = np.asarray(covariance_a, dtype=np.float64), np.asarray(covariance_b, dtype=np.float64)
    if mean_a.shape != mean_b.shape or covariance_a.shape != covariance_b.shape \
            or covariance_a.shape != (mean_a.size, mean_a.size):
        raise ValueError(f"the two Gaussians live in different spaces: means {mean_a.shape} and {mean_b.shape}, "
                         f"covariances {covariance_a.shape} and {covariance_b.shape}")
    root_a = symmetric_sqrt(covariance_a)
    middle = root_a @ covariance_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    distance = float(((mean_a - mean_b) ** 2).sum() + np.trace(covariance_a) + np.trace(covariance_b) - 2.0 * cross)
    return max(distance, 0.0)  # round-off can leave −1e-12 for identical sets


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets [N_a, D] and [N_b, D]."""
    mean_a, covariance_a = gaussian_statistics(features_a)
    mean_b, covariance_b = gaussian_statistics(features_b)
    if mean_a.shape != mean_b.shape:
        raise ValueError(f"the two feature sets have different dimensions ({mean_a.size} and {mean_b.size}): "
                         "compute both with the same feature extractor")
    return frechet_distance_from_statistics(mean_a, covariance_a, mean_b, covariance_b)
