"""Comparing estimators with the Cramér–Rao bound: efficiency, bias, scatter."""

import numpy as np
import pytest

from galcae.evaluate.comparison import summary


@pytest.fixture(scope="module")
def summaries():
    """Flux estimates scattered exactly at the bound, and at twice it with a 10% bias."""
    rng = np.random.default_rng(0)
    truth = rng.uniform(1000, 5000, 20000)
    crb = 0.05 * truth
    at_bound = summary("flux", truth, truth + rng.normal(0, crb), crb)
    twice = summary("flux", truth, truth * 1.1 + rng.normal(0, 2 * crb), crb)
    return at_bound, twice


def test_efficiency_is_one_at_the_bound(summaries):
    """Estimates scattered exactly at the Cramér–Rao bound have efficiency ~1."""
    at_bound, _ = summaries
    assert at_bound["efficiency"] == pytest.approx(1.0, abs=0.03)


def test_scatter_and_bias_at_the_bound(summaries):
    """Unbiased estimates at a 5% bound have a 5% relative scatter and no bias."""
    at_bound, _ = summaries
    assert at_bound["scatter"] == pytest.approx(0.05, rel=0.03) and abs(at_bound["bias"]) < 0.003


def test_efficiency_is_half_at_twice_the_bound(summaries):
    """Estimates scattered at twice the bound have efficiency ~0.5, whatever their bias."""
    _, twice = summaries
    assert twice["efficiency"] == pytest.approx(0.5, abs=0.03)


def test_bias_is_the_median_relative_error(summaries):
    """Estimates 10% high have a bias of 0.1."""
    _, twice = summaries
    assert twice["bias"] == pytest.approx(0.1, abs=0.005)
