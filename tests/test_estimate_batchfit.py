"""The batched torch fit against the scipy + GalSim fit: same likelihood, same optimum."""

from types import SimpleNamespace

import numpy as np
import pytest

from galcae.config import load_stage
from galcae.estimate.batchfit import fit_batch
from galcae.estimate.fit import fit_stamp
from galcae.params import FIT_PARAMETERS
from galcae.physics import make_psf
from galcae.simulate import draw_parameters, render_chunk


@pytest.fixture(scope="module")
def batch_fit():
    """Three bright survey galaxies, a blank and a NaN stamp fitted in one batch from a guess
    10% off in flux; and the GalSim fits of the three from the same guess."""
    cfg = load_stage("simulate", "survey", ["n_galaxies=40", "seed=21"])
    truth = draw_parameters(cfg)
    rendered = render_chunk(cfg, truth)
    pick = np.flatnonzero(rendered["snr"] > 40)[:3]
    images = np.concatenate([rendered["images"][pick], np.zeros((1, 64, 64), np.float32),
                             np.full((1, 64, 64), np.nan, np.float32)])
    rows = np.concatenate([pick, pick[:2]])
    guess = {k: truth[k][rows] * (1.1 if k == "flux" else 1.0) for k in FIT_PARAMETERS}
    fitted = fit_batch(images, cfg, {k: truth[k][rows] for k in ("psf_fwhm", "psf_beta", "sky_level")}, guess)
    references = []
    for j, i in enumerate(pick):
        galaxy_cfg = cfg.for_galaxy({k: truth[k][i] for k in truth})
        references.append(fit_stamp(rendered["images"][i], galaxy_cfg, make_psf(galaxy_cfg),
                                    guess={k: v[j] for k, v in guess.items()}))
    return SimpleNamespace(fitted=fitted, references=references)


def test_blank_and_nan_stamps_fail_alone(batch_fit):
    """A blank or NaN stamp in the batch is a failed row with NaN values."""
    fitted = batch_fit.fitted
    assert list(fitted["status"][3:]) == ["failed: empty or non-finite stamp or guess"] * 2
    assert np.isnan(fitted["flux"][3:]).all()


def test_batch_fit_and_galsim_fit_both_converge(batch_fit):
    """The real stamps beside the failed ones fit 'ok', as they do one by one with GalSim."""
    for j, reference in enumerate(batch_fit.references):
        assert batch_fit.fitted["status"][j] == "ok" and reference["status"] == "ok"


def test_batch_fit_values_are_the_galsim_fits(batch_fit):
    """The batched fit finds the GalSim fit's optimum to a tenth of its error."""
    for j, reference in enumerate(batch_fit.references):
        for name in FIT_PARAMETERS:
            assert abs(batch_fit.fitted[name][j] - reference[name]) < 0.1 * reference[f"{name}_err"], name


def test_batch_fit_errors_are_the_galsim_fits(batch_fit):
    """The batched fit's errors are the GalSim fit's within 5%."""
    for j, reference in enumerate(batch_fit.references):
        for name in FIT_PARAMETERS:
            assert batch_fit.fitted[f"{name}_err"][j] == pytest.approx(reference[f"{name}_err"], rel=0.05), name


@pytest.fixture(scope="module")
def psf_image_fit(aberrated_psf):
    """Three bright galaxies drawn by GalSim through a non-Moffat PSF image, fitted in one
    batch through that image, and one by one by the GalSim fit through it."""
    from galcae.physics import psf_from_image, render_noiseless

    cfg = load_stage("simulate", "survey", ["n_galaxies=3", "seed=5", "ranges.flux=[20000, 60000]",
                                            "psf.fwhm=0.7", "psf.beta=3.0", "noise.sky_level=300"])
    truth = draw_parameters(cfg)
    psf = aberrated_psf
    rng = np.random.default_rng(3)
    images = []
    for i in range(3):
        row = {k: v[i] for k, v in truth.items()}
        clean = render_noiseless(cfg, row, psf_from_image(psf, cfg.pixel_scale)).array
        images.append(clean + rng.normal(size=clean.shape) * np.sqrt(clean.clip(0) + 300 + 25))
    images = np.stack(images).astype(np.float32)
    guess = {k: truth[k] * (1.1 if k == "flux" else 1.0) for k in FIT_PARAMETERS}
    fitted = fit_batch(images, cfg, {"sky_level": 300.0}, guess, psf=psf)
    references = [fit_stamp(images[i], cfg, psf_from_image(psf, cfg.pixel_scale),
                            guess={k: v[i] for k, v in guess.items()}) for i in range(3)]
    return SimpleNamespace(fitted=fitted, references=references, truth=truth)


def test_batch_fit_through_a_psf_image_is_the_galsim_fit_through_it(psf_image_fit):
    """Given a PSF image, the batched fit converges to the GalSim fit's optimum (to a
    tenth of its error) with its errors (within 5%)."""
    fitted = psf_image_fit.fitted
    for j, reference in enumerate(psf_image_fit.references):
        assert fitted["status"][j] == "ok" and reference["status"] == "ok"
        for name in FIT_PARAMETERS:
            assert abs(fitted[name][j] - reference[name]) < 0.1 * reference[f"{name}_err"], name
            assert fitted[f"{name}_err"][j] == pytest.approx(reference[f"{name}_err"], rel=0.05), name


def test_batch_fit_through_a_psf_image_finds_the_truth(psf_image_fit):
    """The fit through the PSF image the galaxies were drawn through lands within 4 sigma of
    every true parameter, with chi²/dof near 1."""
    fitted, truth = psf_image_fit.fitted, psf_image_fit.truth
    for name in FIT_PARAMETERS:
        pulls = (fitted[name] - truth[name]) / fitted[f"{name}_err"]
        assert np.all(np.abs(pulls) < 4), (name, pulls)
    assert np.all(np.abs(fitted["chi2_dof"] - 1) < 0.1)


def test_galaxy_chi2_is_one_for_noise_of_any_assumed_level():
    """Pure noise over a galaxy's footprint gives chi2_dof 1 with the scatter it states, even
    when the assumed noise is 10% off (the sky pixels set the unit); a misfit of the galaxy
    shows; a footprint has at least the 9 brightest pixels."""
    from galcae.estimate.batchfit import galaxy_chi2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    model_snr = np.broadcast_to(30 * np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / 50.0), (200, 64, 64))
    noise = rng.normal(size=(200, 64, 64))
    for scale in (1.0, 1.1, 0.9):
        chi2, sd = galaxy_chi2(noise * scale, model_snr)
        assert abs(np.mean(chi2) - 1) < 0.02 and np.std(chi2) == pytest.approx(sd[0], rel=0.15)
    misfit, sd = galaxy_chi2(noise + 0.1 * model_snr, model_snr)  # a 10% misfit at the peak
    assert np.all(misfit > 1 + 5 * sd)
    _, few = galaxy_chi2(noise[:1], 1e-3 * model_snr[:1])  # 9 pixels: 2 degrees of freedom
    assert few[0] == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("r_half, n, g, beta, x", [(1.0, 4.0, 0.0, 2.5, 32.0), (2.0, 2.5, 0.6, 2.0, 32.0),
                                                   (3.0, 5.0, 0.3, 5.0, 32.0), (1.5, 1.0, 0.6, 3.0, 32.0),
                                                   (1.0, 4.0, 0.0, 2.5, 18.0), (0.5, 1.5, 0.3, 2.0, 45.0)])
def test_wrap_error_bounds_what_a_small_grid_changes(r_half, n, g, beta, x):
    """For galaxies above 1″ (where a grid's wrap-around, not the renderer's interpolation,
    makes the difference) the estimate bounds the drawn difference between each smaller grid
    and a 6-stamp one, in units of the noise, for a bright galaxy on a dark sky, centred or
    off centre."""
    import torch

    from galcae.estimate.batchfit import wrap_errors
    from galcae.physics import pixel_variance
    from galcae.render import SersicRenderer

    cfg = load_stage("simulate", "survey")
    row = dict(flux=3e5, half_light_radius=r_half, sersic_n=n, g1=g, g2=0.0, x=x, y=32.0, psf_fwhm=1.2,
               psf_beta=beta)
    p = {k: torch.tensor([v], dtype=torch.float64) for k, v in row.items()}
    reference = SersicRenderer(64, 0.2, pad=6).double()(p)[0].numpy()
    variance = pixel_variance(reference, 100.0, 1.0, 5.0)
    conditions = {"psf_fwhm": np.array([1.2]), "psf_beta": np.array([beta]), "sky_level": np.array([100.0])}
    for pad in (1, 1.25, 1.5, 2, 2.5, 3):
        drawn = SersicRenderer(64, 0.2, pad=pad).double()(p)[0].numpy()
        difference = np.sqrt(((drawn - reference) ** 2 / variance).sum())
        bound = wrap_errors(cfg, conditions, {k: np.array([v]) for k, v in row.items()}, False, pad)[0]
        assert difference <= 1.1 * bound + 0.05, (pad, difference, bound)


def test_the_grid_follows_the_galaxys_extent():
    """A typical bright survey galaxy is fitted on a grid of 1.25 stamps, a large, cuspy one on
    a dark sky on the full grid (the GalSim comparisons above run through this choice)."""
    from galcae.estimate.batchfit import smallest_grids

    cfg = load_stage("simulate", "survey")
    values = {"flux": np.array([3e4, 3e5]), "half_light_radius": np.array([0.5, 2.5]),
              "sersic_n": np.array([1.5, 4.0]), "g1": np.array([0.2, 0.0]), "g2": np.array([0.0, 0.1])}
    conditions = {"psf_fwhm": np.array([0.8, 0.8]), "psf_beta": np.array([3.0, 3.0]),
                  "sky_level": np.array([300.0, 100.0])}
    assert list(smallest_grids(cfg, conditions, values, False)) == [1.25, 4]


def test_stamps_told_one_moffat_share_its_transform():
    import torch

    from galcae.estimate.batchfit import _moffat_transforms
    from galcae.render import SersicRenderer

    renderer = SersicRenderer(16, 0.2, pad=1)
    given = {"psf_fwhm": torch.tensor([0.8, 0.8, 1.1, 0.8]), "psf_beta": torch.tensor([3.5, 3.5, 3.5, 2.5])}
    distinct, which = _moffat_transforms(renderer, given)
    assert len(distinct) == 3 and which[0] == which[1] != which[2]
    torch.testing.assert_close(distinct[which], renderer.psf_spectrum(given))
    gaussian, which = _moffat_transforms(renderer, {"psf_fwhm": torch.tensor([0.8, 0.8])})
    assert len(gaussian) == 1 and which.tolist() == [0, 0]
