"""Coverage of predicted uncertainties, and their recalibration (sigma bins, S/N, tails)."""

from types import SimpleNamespace

import numpy as np
import pytest

from galcae.uncertainty import VarianceCalibration, coverage


@pytest.fixture(scope="module")
def gaussian():
    """Truths drawn around the predictions with the stated (heteroscedastic) sigma."""
    rng = np.random.default_rng(0)
    z_pred = rng.normal(size=(200_000, 2))
    sigma = np.exp(rng.normal(size=(200_000, 2)))  # heteroscedastic
    z_true = z_pred + sigma * rng.normal(size=sigma.shape)
    return z_true, z_pred, sigma


def test_coverage_of_gaussian_predictions_with_known_variance(gaussian):
    """Truths drawn with the stated sigma fall in the central 68% / 95% intervals 68% / 95% of the time."""
    cov = coverage(*gaussian)
    assert np.allclose(cov[0.68], 0.68, atol=0.005) and np.allclose(cov[0.95], 0.95, atol=0.005)


def test_sigmas_twice_too_large_over_cover(gaussian):
    """With sigmas twice too large the 68% interval holds 95% of the truths."""
    z_true, z_pred, sigma = gaussian
    assert np.allclose(coverage(z_true, z_pred, 2 * sigma)[0.68], 0.953, atol=0.005)  # too wide


def test_sigmas_twice_too_large_are_scaled_by_a_half(gaussian):
    """One bin of recalibration scales sigmas twice too large by 1/2."""
    z_true, z_pred, sigma = gaussian
    one_bin = VarianceCalibration.fit(z_true, z_pred, 2 * sigma, per_bin=len(z_true))
    assert np.allclose(one_bin.scale, 0.5, atol=0.01)


@pytest.fixture(scope="module")
def wrong_at_large_sigma():
    """A head right for small sigmas and 2x too confident for large ones, its binned and its
    one-scale recalibrations fitted on the first half and applied to the second."""
    rng = np.random.default_rng(1)
    z_pred = rng.normal(size=(40_000, 1))
    sigma = np.exp(rng.uniform(-3, 1, size=(40_000, 1)))
    truth_sigma = np.where(sigma > np.exp(-1), 2 * sigma, sigma)
    z_true = z_pred + truth_sigma * rng.normal(size=sigma.shape)
    calibration = VarianceCalibration.fit(z_true[:20_000], z_pred[:20_000], sigma[:20_000])
    fresh = slice(20_000, None)
    one_scale = VarianceCalibration.fit(z_true[:20_000], z_pred[:20_000], sigma[:20_000],
                                        per_bin=20_000).apply(sigma[fresh])
    return SimpleNamespace(z_true=z_true[fresh], z_pred=z_pred[fresh], sigma=sigma,
                           big=sigma[fresh, 0] > np.exp(-1), binned=calibration.apply(sigma[fresh]),
                           one_scale=one_scale)


def test_recalibration_in_bins_of_sigma_fixes_a_head_wrong_only_at_large_sigma(wrong_at_large_sigma):
    """The binned recalibration puts 68% within 1 sigma at both small and large sigma."""
    t = wrong_at_large_sigma
    for half in (t.big, ~t.big):
        assert abs(coverage(t.z_true[half], t.z_pred[half], t.binned[half])[0.68][0] - 0.683) < 0.02


def test_one_scale_per_parameter_cannot_fix_a_head_wrong_only_at_large_sigma(wrong_at_large_sigma):
    """One scale per parameter, right on average, is wrong where the head was right."""
    t = wrong_at_large_sigma
    small = ~t.big
    assert abs(coverage(t.z_true[small], t.z_pred[small], t.one_scale[small])[0.68][0] - 0.683) > 0.1


def test_a_single_variance_scale_reads_as_one_bin(wrong_at_large_sigma):
    """A model saved with one scale per parameter reads as a single bin of that scale."""
    sigma = wrong_at_large_sigma.sigma
    single = VarianceCalibration.from_meta({"variance_scale": [2.0]}, 1)
    assert np.allclose(single.apply(sigma[:5]), 2 * sigma[:5])


@pytest.fixture(scope="module")
def wrong_by_snr():
    """A head 1.5x too confident on faint stamps and 0.7x too cautious on bright ones,
    whatever its sigma; recalibrated with and without the S/N stage."""
    rng = np.random.default_rng(2)
    n = 40_000
    z_pred, sigma = rng.normal(size=(n, 2)), np.exp(rng.uniform(-2, 0, size=(n, 2)))
    snr = np.exp(rng.uniform(0, 6, size=n))
    z_true = z_pred + np.where(snr < 20, 1.5, 0.7)[:, None] * sigma * rng.normal(size=sigma.shape)
    fitted = VarianceCalibration.fit(z_true[:20_000], z_pred[:20_000], sigma[:20_000], snr[:20_000])
    fresh = slice(20_000, None)
    calibration = VarianceCalibration.from_meta({"variance_calibration": fitted.to_dict()}, 2)
    sigma_only = VarianceCalibration.fit(z_true[:20_000], z_pred[:20_000], sigma[:20_000]).apply(sigma[fresh])
    return SimpleNamespace(fitted=fitted, calibration=calibration, sigma=sigma, z_true=z_true[fresh],
                           z_pred=z_pred[fresh], snr=snr[fresh], both=calibration.apply(sigma[fresh], snr[fresh]),
                           sigma_only=sigma_only)


def test_snr_stage_survives_model_json(wrong_by_snr):
    """A calibration with an S/N stage reads back equal from model.json and needs the S/N."""
    calibration = wrong_by_snr.calibration
    assert calibration == wrong_by_snr.fitted and calibration.needs_snr


def test_snr_stage_refuses_to_apply_without_snr(wrong_by_snr):
    """Applying a calibration with an S/N stage without the stamps' S/N is refused."""
    with pytest.raises(ValueError, match="S/N"):
        wrong_by_snr.calibration.apply(wrong_by_snr.sigma)


def test_snr_stage_fixes_a_head_wrong_by_snr_at_every_sigma(wrong_by_snr):
    """With the S/N stage, 68% lie within 1 sigma among faint and bright stamps alike."""
    t = wrong_by_snr
    for half in (t.snr < 20, t.snr >= 20):
        assert np.all(np.abs(coverage(t.z_true[half], t.z_pred[half], t.both[half])[0.68] - 0.683) < 0.03)


def test_bins_of_sigma_alone_cannot_fix_a_head_wrong_by_snr(wrong_by_snr):
    """Without the S/N stage, bins of sigma miss the coverage among faint and bright stamps."""
    t = wrong_by_snr
    for half in (t.snr < 20, t.snr >= 20):
        assert np.all(np.abs(coverage(t.z_true[half], t.z_pred[half], t.sigma_only[half])[0.68]
                             - 0.683) > 0.08)


@pytest.fixture(scope="module")
def non_gaussian_pulls():
    """Light-tailed (uniform) pulls where sigma is large (an estimate bounded by its prior),
    heavy-tailed (Laplace) ones where it is small; the full calibration fitted on half."""
    rng = np.random.default_rng(3)
    n = 40_000
    bounded = rng.uniform(size=n) < 0.5
    z_pred = rng.normal(size=(n, 1))
    sigma = np.exp(np.where(bounded, rng.uniform(-0.5, 0, size=n), rng.uniform(-3, -2, size=n)))[:, None]
    snr = np.exp(rng.uniform(0, 6, size=n))
    shape = np.where(bounded[:, None], rng.uniform(-1, 1, size=(n, 1)), rng.laplace(size=(n, 1)))
    z_true = z_pred + sigma * shape
    fitted = VarianceCalibration.fit(z_true[:20_000], z_pred[:20_000], sigma[:20_000], snr[:20_000])
    fresh = slice(20_000, None)
    calibrated = fitted.apply(sigma[fresh], snr[fresh])
    return SimpleNamespace(fitted=fitted, bounded=bounded[fresh], z_true=z_true[fresh], z_pred=z_pred[fresh],
                           calibrated=calibrated, tail=fitted.tail(calibrated))


def _halves(t):
    """(rows, direction the Gaussian 95% coverage misses in): heavy tails under, light tails over."""
    return ((~t.bounded, -1), (t.bounded, 1))


def test_tail_stage_survives_model_json(non_gaussian_pulls):
    """A calibration with a tail stage reads back equal from model.json."""
    fitted = non_gaussian_pulls.fitted
    assert VarianceCalibration.from_meta({"variance_calibration": fitted.to_dict()}, 1) == fitted


def test_tail_stage_places_the_95_interval_of_non_gaussian_pulls(non_gaussian_pulls):
    """The tail factors put 95% of light- and heavy-tailed pulls inside the 95% interval."""
    t = non_gaussian_pulls
    for half, _ in _halves(t):
        tailed = coverage(t.z_true[half], t.z_pred[half], t.calibrated[half], t.tail[half])
        assert abs(tailed[0.68][0] - 0.683) < 0.02 and abs(tailed[0.95][0] - 0.95) < 0.01


def test_gaussian_95_interval_misses_non_gaussian_pulls(non_gaussian_pulls):
    """The Gaussian 95% interval misses by 3-8 points: under for heavy tails, over for light ones."""
    t = non_gaussian_pulls
    for half, wrong_way in _halves(t):
        gaussian = coverage(t.z_true[half], t.z_pred[half], t.calibrated[half])
        assert 0.03 < wrong_way * (gaussian[0.95][0] - 0.95) < 0.08


def test_models_calibrated_before_the_tail_stage_keep_gaussian_intervals():
    """A model.json without a tail stage gives tail factors of 1."""
    assert np.all(VarianceCalibration.from_meta({"variance_scale": [2.0]}, 1).tail(np.ones((3, 1))) == 1)
