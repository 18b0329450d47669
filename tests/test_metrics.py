"""The demo's Fréchet distance and its digits classifier.

Oracles: the closed form of the 2-Wasserstein distance between Gaussians whose covariances commute
(‖μ₁ − μ₂‖² + Σᵢ (√aᵢ − √bᵢ)² in the shared eigenbasis), scipy's general matrix square root for ones
that do not, and sample sets built to have exactly a chosen mean and covariance.
"""

import numpy as np
import pytest
import torch

from comfyui_dyweight.demo import classifier, train_classifier
from comfyui_dyweight.demo.metrics import frechet_distance, frechet_distance_from_statistics


def rotation(dimension: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dimension, dimension)))
    return q


def samples_with(mean: np.ndarray, covariance: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` points whose sample mean is exactly ``mean`` and unbiased sample covariance exactly ``covariance``."""
    z = np.random.default_rng(seed).normal(size=(count, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whitened: covariance I
    return mean + z @ np.linalg.cholesky(covariance).T


def test_commuting_gaussians_match_the_closed_form():
    q = rotation(6, 0)
    a, b = np.array([0.5, 1.0, 2.0, 3.0, 0.1, 4.0]), np.array([2.0, 0.3, 2.0, 1.0, 0.9, 0.2])
    mean_a, mean_b = np.arange(6.0), np.arange(6.0)[::-1] * 0.5
    expected = ((mean_a - mean_b) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance_from_statistics(mean_a, q @ np.diag(a) @ q.T, mean_b, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)


def test_one_dimension_is_the_difference_of_means_and_deviations():
    got = frechet_distance_from_statistics([1.0], [[4.0]], [-2.0], [[9.0]])
    assert got == pytest.approx(3.0 ** 2 + (2.0 - 3.0) ** 2, rel=1e-12)


def test_non_commuting_gaussians_match_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg", reason="scipy (a ComfyUI host dependency) is the oracle here")
    rng = np.random.default_rng(1)
    m_a, m_b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    covariance_a, covariance_b = m_a @ m_a.T + 0.1 * np.eye(5), m_b @ m_b.T + 0.1 * np.eye(5)
    mean_a, mean_b = rng.normal(size=5), rng.normal(size=5)
    cross = linalg.sqrtm(covariance_a @ covariance_b).real  # the asymmetric textbook form
    expected = ((mean_a - mean_b) ** 2).sum() + np.trace(covariance_a + covariance_b - 2 * cross)
    assert frechet_distance_from_statistics(mean_a, covariance_a, mean_b, covariance_b) == pytest.approx(expected, rel=1e-9)


def test_sample_sets_with_known_statistics():
    q = rotation(4, 2)
    a, b = np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.2, 2.0, 1.5, 1.0])
    mean_a, mean_b = np.array([1.0, 0.0, -1.0, 2.0]), np.array([0.0, 0.5, -1.0, 1.0])
    features_a = samples_with(mean_a, q @ np.diag(a) @ q.T, 300, 3)
    features_b = torch.from_numpy(samples_with(mean_b, q @ np.diag(b) @ q.T, 40, 4))  # tensors work too
    expected = ((mean_a - mean_b) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(features_a, features_b) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("count, dimension", [(200, 8), (20, 64)])  # full rank, and fewer samples than dimensions
def test_identical_sets_are_at_distance_zero_and_order_does_not_matter(count, dimension):
    rng = np.random.default_rng(5)
    features = rng.normal(size=(count, dimension)) @ rng.normal(size=(dimension, dimension))
    other = rng.normal(size=(count + 7, dimension)) * 2.0 + 1.0
    scale = np.trace(np.cov(features, rowvar=False))
    assert frechet_distance(features, features) <= 1e-9 * scale
    assert frechet_distance(features, features[::-1].copy()) <= 1e-9 * scale
    assert frechet_distance(features, other) == pytest.approx(frechet_distance(other, features), rel=1e-9)


def test_bad_features_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="2-D array"):
        frechet_distance(np.zeros(5), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="N ≥ 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((4, 3), np.nan), np.zeros((4, 3)))


# --- the shipped classifier ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def space():
    return classifier.load_classifier()


def test_shipped_classifier_recognises_the_held_out_digits(space):
    labels = space.heldout_labels
    assert len(labels) == 600 and set(labels.tolist()) == set(range(10))
    assert train_classifier.accuracy(space.network, space.heldout_images, labels) >= 0.97
    assert space.reference_features.shape == (600, classifier.DEFAULT_FEATURES)


def test_held_out_digits_are_the_ones_the_split_holds_out(space):
    from safetensors.torch import load_file

    stored = load_file(classifier.DEFAULT_CLASSIFIER)[classifier.HELDOUT_INDICES]
    _, heldout = train_classifier.split_digits(1797, 600, 0)
    assert torch.equal(stored.long(), heldout)


def test_fd_separates_real_digits_from_blurred_and_from_noise(space):
    real = space.heldout_images
    first, second = real[:300], real[300:]
    blurred = torch.nn.functional.avg_pool2d(first, 5, stride=1, padding=2, count_include_pad=False)
    noise = torch.rand(300, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    between_halves = frechet_distance(space.features(first), space.features(second))
    assert space.frechet_distance(real) <= 1e-9 * np.trace(np.cov(space.reference_features, rowvar=False))
    assert between_halves < space.frechet_distance(blurred) < space.frechet_distance(noise)


def test_training_is_deterministic_for_a_seed():
    images = torch.rand(96, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    labels = torch.arange(96) % 10
    first, second = (train_classifier.train(images, labels, epochs=2, batch_size=32, lr=3e-3, seed=0)
                     for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_a_file_without_held_out_digits_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"network.head.bias": torch.zeros(10)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a digits-classifier file.*heldout.digits"):
        classifier.load_classifier(tmp_path / "x.safetensors")
