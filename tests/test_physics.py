"""The galaxy, PSF and noise model: flux, centre and orientation of a rendered galaxy; S/N."""

import numpy as np
import pytest

from galcae.conditions import stamp_noise_sigma
from galcae.config import load_stage
from galcae.physics import render_noiseless, stamp_snr
from galcae.simulate import draw_parameters, render_chunk

from conftest import tiny_sim

ROW = {"flux": 20000.0, "half_light_radius": 0.5, "sersic_n": 1.0, "ellipticity": 0.3,
       "position_angle": 30.0, "x": 15.3, "y": 17.8, "seed": 7}


def _moments(image):
    yy, xx = np.indices(image.shape) + 0.5  # galcae pixel centres
    w = image / image.sum()
    cx, cy = (w * xx).sum(), (w * yy).sum()
    qxx, qyy, qxy = (w * (xx - cx) ** 2).sum(), (w * (yy - cy) ** 2).sum(), (w * (xx - cx) * (yy - cy)).sum()
    return cx, cy, np.rad2deg(0.5 * np.arctan2(2 * qxy, qxx - qyy)) % 180


def test_noiseless_flux_matches_requested_flux():
    """A galaxy the stamp holds sums to its requested flux (GalSim's default accuracy)."""
    image = render_noiseless(tiny_sim(), ROW).array
    assert image.sum() == pytest.approx(ROW["flux"], rel=5e-3)


def test_centre_follows_the_documented_convention():
    """The light centroid sits at (x, y) in galcae pixels (pixel centres at i + 0.5)."""
    cx, cy, _ = _moments(render_noiseless(tiny_sim(), ROW).array)
    assert (cx, cy) == (pytest.approx(ROW["x"], abs=0.02), pytest.approx(ROW["y"], abs=0.02))


def test_position_angle_follows_the_documented_convention():
    """The major axis lies at the position angle, counter-clockwise from +x."""
    _, _, pa = _moments(render_noiseless(tiny_sim(), ROW).array)
    assert pa == pytest.approx(ROW["position_angle"], abs=1.0)


def test_stamp_snr_estimates_the_matched_filter_snr():
    """The S/N measured on a noisy stamp is the simulation's matched-filter S/N for bright galaxies."""
    cfg = load_stage("simulate", "survey", ["n_galaxies=24", "seed=97", "ranges.flux=[3000, 300000]"])
    rendered = render_chunk(cfg, draw_parameters(cfg))
    images, snr = rendered["images"], rendered["snr"]
    estimate = stamp_snr(images, stamp_noise_sigma(images), cfg.noise.gain)
    bright = snr > 30
    assert bright.sum() > 10 and np.all(np.abs(estimate[bright] / snr[bright] - 1) < 0.25)
    assert np.median(np.abs(estimate[bright] / snr[bright] - 1)) < 0.05


def test_a_galaxy_drawn_through_a_psf_image_matches_the_psf_itself():
    """psf_from_image: a PSF image (pixel included) stands for the profile it was drawn from,
    here an elliptical Moffat galcae has no parameters for, to a small fraction of the noise."""
    import galsim

    from galcae.physics import psf_from_image, render_noiseless

    cfg = load_stage("simulate", "survey", ["psf.fwhm=0.8", "psf.beta=3", "noise.sky_level=500"])
    true_psf = galsim.Moffat(beta=3.0, fwhm=0.8).shear(e1=0.05, e2=-0.03)
    image = true_psf.drawImage(nx=47, ny=47, scale=0.2).array
    row = {"flux": 1e5, "half_light_radius": 0.8, "sersic_n": 2.0, "ellipticity": 0.3,
           "position_angle": 30.0, "x": 32.3, "y": 31.7}
    exact = render_noiseless(cfg, row, true_psf).array
    through_image = render_noiseless(cfg, row, psf_from_image(image / image.sum(), 0.2)).array
    variance = exact.clip(0) + 500 + 25
    assert np.sqrt(np.sum((exact - through_image) ** 2 / variance)) < 0.2  # S/N of this galaxy: ~170
