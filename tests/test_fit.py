"""The Cramér–Rao bound against analytic cases, and the classical fit against it."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable

from galcae.cli import main
from galcae.config import load_stage
from galcae.estimate.crb import cramer_rao
from galcae.params import FIT_PARAMETERS
from galcae.physics import render
from galcae.estimate.fit import fit_stamp
from galcae.physics import pixel_variance

GALAXY = dict(flux=20000.0, half_light_radius=0.8, sersic_n=1.5, g1=0.2, g2=-0.1, x=31.3, y=33.6)


def test_crb_of_a_gaussian_matches_the_analytic_flux_bound():
    """Sky-limited round Gaussian (Sérsic n = 0.5 with a Gaussian PSF), total width s pixels:
    sigma_F = sqrt(4 pi) s sigma_sky with the shape known, sqrt(8 pi) s sigma_sky with the
    size free too (the flux-size correlation costs a factor sqrt(2))."""
    cfg = load_stage("simulate", "paper", ["noise.sky_level=10000"])
    theta = dict(flux=100.0, half_light_radius=1.0, sersic_n=0.5, g1=0.0, g2=0.0, x=32.0, y=32.0)
    sigma_sky = np.sqrt(10000.0 + 25.0)
    s_galaxy = 1.0 / np.sqrt(2 * np.log(2))
    s_psf = 0.7 / (2 * np.sqrt(2 * np.log(2)))
    s = np.hypot(s_galaxy, s_psf) / cfg.pixel_scale
    known_shape = cramer_rao(cfg, theta, free=("flux",))["flux"]
    size_free = cramer_rao(cfg, theta, free=("flux", "half_light_radius"))["flux"]
    assert known_shape == pytest.approx(np.sqrt(4 * np.pi) * s * sigma_sky, rel=0.02)
    assert size_free == pytest.approx(np.sqrt(8 * np.pi) * s * sigma_sky, rel=0.02)
    # Every parameter free: never tighter than with fewer unknowns.
    assert cramer_rao(cfg, theta)["flux"] >= size_free * 0.999


def _noisy(cfg, theta, rng):
    mu = render(cfg, theta)
    return mu + rng.normal(0.0, np.sqrt(pixel_variance(mu, cfg.noise.sky_level, cfg.noise.gain,
                                                       cfg.noise.read_noise)))


def test_fit_recovers_a_bright_galaxy_within_a_few_crb():
    cfg = load_stage("simulate", "paper")
    crb = cramer_rao(cfg, GALAXY)
    result = fit_stamp(_noisy(cfg, GALAXY, np.random.default_rng(5)), cfg)
    assert result["status"] == "ok" and 0.7 < result["chi2_dof"] < 1.3
    for name in FIT_PARAMETERS:
        assert abs(result[name] - GALAXY[name]) < 4 * crb[name], name
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


def test_fit_cli_flags_empty_and_nan_stamps(tiny_dataset, tmp_path, capsys):
    """`galcae fit` on a cube: real stamps fit, an all-NaN and an all-zero stamp are flagged rows."""
    images = tiny_dataset.load_images(np.arange(3)).copy()
    images[1] = np.nan
    images[2] = 0.0
    cube = tmp_path / "cube.fits"
    fits.writeto(cube, images)
    out = tmp_path / "fit.parquet"
    tiny = ["--set", "stamp_size=32"]
    assert main(["fit", str(cube), "-o", str(out), *tiny]) == 0
    cat = QTable.read(out)
    assert len(cat) == 3 and str(cat["flux"].unit) == "adu" and str(cat["seconds"].unit) == "s"
    assert list(cat["flag_empty"]) == [False, True, True]
    assert list(cat["flag_fit_failed"]) == [False, True, True] and cat["status"][0] == "ok"
    assert cat["flux"][0].value == pytest.approx(tiny_dataset.params["flux"][0], rel=0.2)
    assert np.isnan(cat["flux"][1].value) and cat["status"][1].startswith("failed")
    assert main(["fit", str(cube), "-o", str(out), *tiny]) == 1  # exists: refused
    assert "--overwrite" in capsys.readouterr().err
