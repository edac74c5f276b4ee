"""Neighbours modelled and subtracted before the galaxy's fit: what masking alone leaves."""

import galsim
import numpy as np
import pytest

from galcae.catalog.segment import segment
from galcae.conditions import stamp_noise_sigma
from galcae.estimate.batchfit import fit_batch
from galcae.estimate.neighbours import MAX_FITTED, Neighbours, _brightest, neighbour_light

SIZE, SCALE, SKY = 64, 0.2, 400.0
PSF = galsim.Moffat(beta=3.5, fwhm=0.8)
TRUTH = {"flux": 2e4, "half_light_radius": 0.5, "sersic_n": 1.0, "g1": 0.0, "g2": 0.0, "x": SIZE / 2, "y": SIZE / 2}


def draw(flux, r_half, n, dx=0.0, dy=0.0):
    profile = galsim.Convolve(galsim.Sersic(n=n, half_light_radius=r_half, flux=flux), PSF)
    return profile.drawImage(nx=SIZE, ny=SIZE, scale=SCALE, offset=(dx, dy)).array


@pytest.fixture(scope="module")
def blended():
    """Twelve noise realisations of a galaxy with a brighter, extended neighbour 2.4" away."""
    from galcae.config import load_stage

    cfg = load_stage("simulate", "survey", ["psf.fwhm=0.8", "psf.beta=3.5"])
    image = draw(TRUTH["flux"], 0.5, 1.0) + draw(4e4, 0.8, 2.0, dx=12)
    rng = np.random.default_rng(5)
    sigma = np.sqrt((np.clip(image, 0, None) + SKY) / cfg.noise.gain + (cfg.noise.read_noise / cfg.noise.gain) ** 2)
    stamps = (image + rng.normal(0, 1, (12, SIZE, SIZE)) * sigma).astype(np.float32)
    return cfg, stamps, segment(stamps, stamp_noise_sigma(stamps))


def fitted_flux(cfg, stamps, mask):
    conditions = {"psf_fwhm": 0.8, "psf_beta": 3.5, "sky_level": SKY}
    guess = {k: np.full(len(stamps), v * (1.1 if k == "flux" else 1)) for k, v in TRUTH.items()}
    return fit_batch(stamps, cfg, conditions, guess, mask=mask)["flux"]


def test_subtracting_the_neighbours_model_removes_the_bias_masking_leaves(blended):
    """Masked only, the neighbour's wings add to the galaxy's flux; its model subtracted, they do not."""
    cfg, stamps, segments = blended
    assert (segments.n_neighbours == 1).all()
    conditions = {"psf_fwhm": 0.8, "psf_beta": 3.5, "sky_level": SKY}
    models = neighbour_light(stamps, cfg, conditions, segments.neighbours)
    light = models.light
    assert (models.count == 1).all() and light.min() >= -1e-3
    masked = fitted_flux(cfg, stamps, segments.mask) / TRUTH["flux"] - 1
    subtracted = fitted_flux(cfg, stamps - light, segments.mask) / TRUTH["flux"] - 1
    error = subtracted.std() / np.sqrt(len(stamps))
    assert masked.mean() > subtracted.mean() + 5 * error
    assert abs(subtracted.mean()) < 3 * error + 0.003


def test_only_the_brightest_neighbours_of_a_stamp_are_fitted():
    sources = {"stamp": np.array([0, 0, 0, 0, 0, 1, 1]), "flux": np.array([1.0, 5, 3, 4, 2, 7, 6])}
    chosen = _brightest(sources)
    assert MAX_FITTED == 4 and chosen.tolist() == [1, 2, 3, 4, 5, 6]


def test_a_stamp_without_neighbours_gets_no_light():
    empty = {k: np.zeros(0) for k in ("x", "y", "flux", "x2", "y2", "xy")}
    neighbours = Neighbours(np.zeros((2, SIZE, SIZE), np.int16), np.ones(2, int),
                            {"stamp": np.zeros(0, int), "label": np.zeros(0, int), **empty})
    models = neighbour_light(np.ones((2, SIZE, SIZE), np.float32), None, {}, neighbours)
    assert not models.light.any() and not models.count.any() and not len(models.stamp)
    assert neighbours.take(np.array([1])).labels.shape == (1, SIZE, SIZE)


def test_a_neighbour_merged_with_the_galaxy_is_found_in_the_residual():
    """An unexplained source 12 pixels from the galaxy's centre is found; noise alone, or a
    misfit ring about the centre, is not."""
    from galcae.estimate.neighbours import hidden_neighbours

    rng = np.random.default_rng(2)
    noise = rng.normal(0, 10.0, (3, SIZE, SIZE)).astype(np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    ring = 40 * np.exp(-0.5 * ((np.hypot(xx - 32, yy - 32) - 4) / 1.5) ** 2)
    residuals = noise + np.stack([draw(3000, 0.4, 1.0, dx=12), np.zeros((SIZE, SIZE)), ring]).astype(np.float32)
    hidden, grown = hidden_neighbours(residuals, np.full(3, 10.0), np.full(3, 32.0), np.full(3, 32.0), None,
                                      np.ones(3, bool))
    assert hidden.sources["stamp"].tolist() == [0]
    assert abs(hidden.sources["x"][0] + 0.5 - 44) < 1.5 and grown[0, 32, 44] and not grown[0, 32, 32]
    assert not grown[1:].any() and (hidden.central == 0).all()


def test_the_neighbours_model_widens_the_galaxys_errors_where_they_overlap(blended):
    """The subtracted model's covariance adds to the galaxy's flux variance: more for a
    neighbour 2.4" away than nothing, and never negative."""
    from galcae.estimate.neighbours import propagated_covariance

    cfg, stamps, segments = blended
    conditions = {"psf_fwhm": 0.8, "psf_beta": 3.5, "sky_level": SKY}
    models = neighbour_light(stamps, cfg, conditions, segments.neighbours)
    fit = fit_batch(stamps - models.light, cfg, conditions, {k: np.full(len(stamps), v) for k, v in TRUTH.items()},
                    mask=segments.mask)
    extra = propagated_covariance(models, fit, segments.mask, cfg, conditions)
    variance = np.diagonal(extra, axis1=1, axis2=2)
    assert (variance >= -1e-9 * fit["flux"][:, None] ** 2).all()
    assert (variance[:, 0] > 0.05 * fit["flux_err"] ** 2).all()
