"""Stars among the galaxies: spread_model and flag_star."""

import galsim
import numpy as np
import pytest

from galcae.config import load_stage
from galcae.estimate.stellarity import spread_model

SIM = load_stage("simulate", "survey", [])
FWHM, BETA, SKY = 0.8, 3.0, 300.0
SIGMA = float(np.sqrt(SKY + 25.0))  # gain 1, read noise 5 e-


def stamp(profile, x=32.3, y=31.6, noise_seed=None):
    image = profile.drawImage(nx=64, ny=64, scale=0.2, offset=(x - 32, y - 32))
    if noise_seed is not None:
        image.addNoise(galsim.CCDNoise(galsim.BaseDeviate(noise_seed), sky_level=SKY, gain=1.0, read_noise=5.0))
    return image.array.astype(np.float32)


def measure(images, x=32.3, y=31.6, mask=None, psf=None, conditions=None):
    n = len(images)
    conditions = conditions or {"psf_fwhm": np.full(n, FWHM), "psf_beta": np.full(n, BETA),
                                "sky_level": np.full(n, SKY)}
    return spread_model(SIM, np.stack(images), np.full(n, SIGMA), conditions,
                        {"x": np.full(n, x), "y": np.full(n, y), "flux": np.full(n, 1e4)}, mask, psf)


PSF = galsim.Moffat(beta=BETA, fwhm=FWHM)


def galaxy(r_half, flux=1e4):
    return galsim.Convolve(galsim.Sersic(n=1.0, half_light_radius=r_half, flux=flux), PSF)


def test_a_noiseless_star_has_no_spread_and_a_galaxy_does():
    """spread_model is 0 for the PSF itself at any flux, and grows with the galaxy's size."""
    out = measure([stamp(PSF.withFlux(1e3)), stamp(PSF.withFlux(1e5)), stamp(galaxy(0.2)), stamp(galaxy(0.6))])
    np.testing.assert_allclose(out["spread_model"][:2], 0.0, atol=2e-4)
    assert 0.002 < out["spread_model"][2] < out["spread_model"][3]


def test_bright_stars_are_flagged_and_galaxies_are_not():
    images = [stamp(PSF.withFlux(3e4), noise_seed=i) for i in range(5)]
    images += [stamp(galaxy(0.3, 3e4), noise_seed=10 + i) for i in range(5)]
    out = measure(images)
    assert list(out["flag_star"]) == [True] * 5 + [False] * 5
    assert np.all(out["spread_model_err"] > 0)


def test_a_faint_star_is_not_flagged_against_its_errors():
    """At S/N of a few the errors allow a galaxy: the flag asks for a point source within them."""
    out = measure([stamp(PSF.withFlux(150.0), noise_seed=3)])
    assert not out["flag_star"][0]
    assert out["spread_model_err"][0] > 0.003


def test_masked_pixels_do_not_count():
    """Hot pixels under the mask, next to a star, leave its spread_model as it was."""
    star = stamp(PSF.withFlux(1e4))
    crowded = star.copy()
    crowded[33:35, 35] += 2000.0
    mask = np.zeros((1, 64, 64), bool)
    mask[0, 33:35, 35] = True
    alone = measure([star], mask=mask)["spread_model"][0]
    masked = measure([crowded], mask=mask)["spread_model"][0]
    unmasked = measure([crowded])["spread_model"][0]
    assert masked == pytest.approx(alone, abs=1e-5)
    assert unmasked > alone + 1e-3


def test_a_star_through_a_psf_image_has_no_spread():
    """With the PSF as an image (a Kolmogorov, not a Moffat), the PSF model is that image."""
    kolmogorov = galsim.Kolmogorov(fwhm=0.9)
    psf_image = kolmogorov.drawImage(nx=41, ny=41, scale=0.2).array
    psf_image /= psf_image.sum()
    out = measure([stamp(kolmogorov.withFlux(2e4), x=32.0, y=32.0)], x=32.0, y=32.0, psf=psf_image,
                  conditions={"psf_fwhm": np.array([0.9]), "sky_level": np.array([SKY])})
    assert abs(out["spread_model"][0]) < 3e-4


def test_an_unknown_centre_gives_nan_and_no_flag():
    out = spread_model(SIM, np.stack([stamp(PSF.withFlux(1e4))]), np.array([SIGMA]),
                       {"psf_fwhm": np.array([FWHM]), "psf_beta": np.array([BETA]), "sky_level": np.array([SKY])},
                       {"x": np.array([np.nan]), "y": np.array([32.0])})
    assert np.isnan(out["spread_model"][0]) and not out["flag_star"][0]


@pytest.mark.parametrize("fwhm", [0.5, 1.2])
def test_the_flag_holds_across_the_seeing(fwhm):
    psf = galsim.Moffat(beta=BETA, fwhm=fwhm)
    conditions = {"psf_fwhm": np.full(2, fwhm), "psf_beta": np.full(2, BETA), "sky_level": np.full(2, SKY)}
    out = measure([stamp(psf.withFlux(3e4), noise_seed=1),
                   stamp(galsim.Convolve(galsim.Sersic(n=1, half_light_radius=0.4, flux=3e4), psf), noise_seed=2)],
                  conditions=conditions)
    assert list(out["flag_star"]) == [True, False]


def test_a_model_without_a_centre_gets_the_stamps_light_centre():
    """For a model that does not measure x, y, spread_model is taken at the light's first
    moments around its brightest spot: a bright star away from the centre is found there."""
    from galcae.catalog.stars import light_centres

    images = np.stack([stamp(PSF.withFlux(3e4), x=20.5, y=40.5, noise_seed=1)])
    mask = np.zeros(images.shape, bool)
    centre = light_centres(images, np.array([SIGMA]), mask)
    assert centre["x"][0] == pytest.approx(20.5, abs=0.1) and centre["y"][0] == pytest.approx(40.5, abs=0.1)
    blank = light_centres(np.zeros((1, 64, 64), np.float32), np.array([SIGMA]), mask)
    assert np.isnan(blank["x"][0])


def test_a_source_the_model_resolves_is_not_measured_for_a_star():
    """A catalog skips spread_model where r½ is 2 sigma above 0.3": such a source is no star."""
    from types import SimpleNamespace

    from galcae.catalog.stars import stellarity

    images = np.stack([stamp(galaxy(1.0, 3e4), noise_seed=1), stamp(PSF.withFlux(3e4), noise_seed=2)])
    ready = SimpleNamespace(images=images, noise_sigma=np.full(2, SIGMA), mask=np.zeros(images.shape, bool))
    conditions = {"psf_fwhm": np.full(2, FWHM), "psf_beta": np.full(2, BETA), "sky_level": np.full(2, SKY)}
    centres = {"x": np.full(2, 32.3), "y": np.full(2, 31.6), "flux": np.full(2, 3e4),
               "half_light_radius": np.array([1.0, 0.16]), "half_light_radius_err": np.array([0.05, 0.05])}
    out = stellarity(SIM, ready, conditions, centres, np.ones(2, bool), None)
    assert np.isnan(out["spread_model"][0]) and not out["flag_star"][0]
    assert out["flag_star"][1]
