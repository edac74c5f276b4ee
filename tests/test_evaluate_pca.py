"""The PCA regression baseline."""

import numpy as np
import pytest

from galcae.evaluate.pca import pca_baseline


@pytest.fixture(scope="module")
def linear_target():
    """PCA baselines of a target that is a linear function of noisy 64-pixel images."""
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 64))
    coeffs = rng.normal(size=(400, 3))
    pixels = coeffs @ basis + 0.01 * rng.normal(size=(400, 64))
    target = {"t": coeffs @ np.array([1.0, -2.0, 0.5])}
    return pca_baseline(pixels[:300], {"t": target["t"][:300]}, pixels[300:], {"t": target["t"][300:]},
                        n_components=10)


def test_pca_regression_recovers_a_linear_target(linear_target):
    """A target that is a linear function of the pixels is recovered by PCA-all, R² near 1."""
    assert linear_target["all"]["t"] > 0.99


def test_best_single_component_does_worse_than_all(linear_target):
    """A target spread over three components is predicted worse by the best single one."""
    assert linear_target["best_single"]["t"] < linear_target["all"]["t"]
