"""The Cramér–Rao bound against the analytic case of a sky-limited Gaussian galaxy."""

import numpy as np
import pytest

from galcae.config import load_stage
from galcae.estimate.crb import cramer_rao


@pytest.fixture(scope="module")
def gaussian_case():
    """Sky-limited round Gaussian (Sérsic n = 0.5 with a Gaussian PSF): its config, parameters,
    total width s in pixels and sky noise."""
    cfg = load_stage("simulate", "paper", ["noise.sky_level=10000"])
    theta = dict(flux=100.0, half_light_radius=1.0, sersic_n=0.5, g1=0.0, g2=0.0, x=32.0, y=32.0)
    sigma_sky = np.sqrt(10000.0 + 25.0)
    s_galaxy = 1.0 / np.sqrt(2 * np.log(2))
    s_psf = 0.7 / (2 * np.sqrt(2 * np.log(2)))
    s = np.hypot(s_galaxy, s_psf) / cfg.pixel_scale
    return cfg, theta, s, sigma_sky


def test_crb_of_a_gaussian_with_known_shape_is_the_analytic_flux_bound(gaussian_case):
    """With the shape known, sigma_F = sqrt(4 pi) s sigma_sky."""
    cfg, theta, s, sigma_sky = gaussian_case
    known_shape = cramer_rao(cfg, theta, free=("flux",))["flux"]
    assert known_shape == pytest.approx(np.sqrt(4 * np.pi) * s * sigma_sky, rel=0.02)


def test_crb_of_a_gaussian_with_free_size_is_the_analytic_flux_bound(gaussian_case):
    """With the size free too, sigma_F = sqrt(8 pi) s sigma_sky: the flux-size correlation costs sqrt(2)."""
    cfg, theta, s, sigma_sky = gaussian_case
    size_free = cramer_rao(cfg, theta, free=("flux", "half_light_radius"))["flux"]
    assert size_free == pytest.approx(np.sqrt(8 * np.pi) * s * sigma_sky, rel=0.02)


def test_crb_with_every_parameter_free_is_never_tighter(gaussian_case):
    """Every parameter free: the flux bound is never tighter than with fewer unknowns."""
    cfg, theta, _, _ = gaussian_case
    size_free = cramer_rao(cfg, theta, free=("flux", "half_light_radius"))["flux"]
    assert cramer_rao(cfg, theta)["flux"] >= size_free * 0.999
