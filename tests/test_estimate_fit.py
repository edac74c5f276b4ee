"""The classical (GalSim + scipy) maximum-likelihood fit against the Cramér–Rao bound."""

import numpy as np
import pytest

from galcae.config import load_stage
from galcae.estimate.crb import cramer_rao
from galcae.estimate.fit import fit_stamp
from galcae.params import FIT_PARAMETERS
from galcae.physics import pixel_variance, render

GALAXY = dict(flux=20000.0, half_light_radius=0.8, sersic_n=1.5, g1=0.2, g2=-0.1, x=31.3, y=33.6)


def _noisy(cfg, theta, rng):
    mu = render(cfg, theta)
    return mu + rng.normal(0.0, np.sqrt(pixel_variance(mu, cfg.noise.sky_level, cfg.noise.gain,
                                                       cfg.noise.read_noise)))


@pytest.fixture(scope="module")
def bright_fit():
    """The fit of one noisy bright galaxy, and the bound of its parameters."""
    cfg = load_stage("simulate", "paper")
    return fit_stamp(_noisy(cfg, GALAXY, np.random.default_rng(5)), cfg), cramer_rao(cfg, GALAXY)


def test_fit_of_a_bright_galaxy_converges_to_a_good_chi2(bright_fit):
    """The fit succeeds with a reduced chi-squared near 1."""
    result, _ = bright_fit
    assert result["status"] == "ok" and 0.7 < result["chi2_dof"] < 1.3


def test_fit_recovers_a_bright_galaxy_within_a_few_crb(bright_fit):
    """Every fitted parameter lies within 4 sigma_CRB of the truth."""
    result, crb = bright_fit
    for name in FIT_PARAMETERS:
        assert abs(result[name] - GALAXY[name]) < 4 * crb[name], name


def test_fit_errors_are_the_crb(bright_fit):
    """The fit's Hessian errors are the Cramér–Rao bound within 30%."""
    result, crb = bright_fit
    for name in FIT_PARAMETERS:
        assert result[f"{name}_err"] == pytest.approx(crb[name], rel=0.3), name


def test_maximum_likelihood_scatter_approaches_the_crb():
    """24 noise realisations at S/N ~ 40: the fit's scatter is the bound within sampling error."""
    cfg = load_stage("simulate", "paper")
    crb = cramer_rao(cfg, GALAXY)
    rng = np.random.default_rng(11)
    fits_ = np.array([[r[n] for n in FIT_PARAMETERS] for r in
                      (fit_stamp(_noisy(cfg, GALAXY, rng), cfg) for _ in range(24))])
    for i, name in enumerate(FIT_PARAMETERS):
        assert 0.6 < fits_[:, i].std(ddof=1) / crb[name] < 1.5, name
