"""Scores: R², relative-error bias and scatter, per S/N bin."""

import numpy as np
import pytest

from galcae.evaluate.metrics import binned_error_summary, error_summary, r2, r2_log10


def test_r2_on_known_inputs():
    """R² is 1 for a perfect prediction, 0 for predicting the mean, negative when worse."""
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert r2(y, y) == 1.0
    assert r2(y, np.full(4, y.mean())) == 0.0
    assert r2(y, y[::-1]) < 0


def test_log10_r2_survives_nonpositive_predictions():
    """A negative flux prediction (possible with a linear latent) scores badly, not NaN."""
    true = np.array([100.0, 1000.0, 10000.0])
    assert r2_log10(true, true) == pytest.approx(1.0)
    worse = r2_log10(true, np.array([-5.0, 1000.0, 10000.0]))
    assert np.isfinite(worse) and worse < 1.0


TRUE = np.full(5, 100.0)
PRED = np.array([90.0, 100.0, 110.0, 100.0, 120.0])


def test_error_summary_bias_is_the_median_relative_error():
    """The summary counts the galaxies; its bias is the median relative error."""
    summary = error_summary(TRUE, PRED)
    assert summary["n"] == 5 and summary["bias"] == pytest.approx(0.0)


def test_error_summary_scatter_is_the_mad_std():
    """The scatter is the mad_std of the relative errors."""
    assert error_summary(TRUE, PRED)["scatter"] == pytest.approx(1.4826 * 0.1, rel=1e-3)


def test_binned_error_summary_splits_by_snr():
    """Galaxies fall into the S/N bins their S/N belongs to."""
    bins = binned_error_summary(TRUE, PRED, snr=[5, 5, 50, 50, 500])
    assert [b["n"] for b in bins] == [2, 0, 2, 1]


def test_binned_error_summary_of_an_empty_bin_and_the_open_last_bin():
    """An empty bin has no bias; the last bin has no upper S/N end."""
    bins = binned_error_summary(TRUE, PRED, snr=[5, 5, 50, 50, 500])
    assert bins[1]["bias"] is None and bins[-1]["snr_max"] is None
