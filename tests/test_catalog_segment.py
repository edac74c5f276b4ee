"""Every stamp segmented: neighbours masked and counted, blends measured and flagged."""

import galsim
import numpy as np
import pytest

from galcae.catalog.segment import BLENDED, segment
from galcae.conditions import stamp_noise_sigma
from galcae.estimate.batchfit import fit_batch

SIZE, SCALE, NOISE = 64, 0.2, 10.0
PSF = galsim.Moffat(beta=3.5, fwhm=0.8)


def galaxy(flux=2e4, r_half=0.5, dx=0.0, dy=0.0) -> np.ndarray:
    profile = galsim.Convolve(galsim.Sersic(n=1.0, half_light_radius=r_half, flux=flux), PSF)
    return profile.drawImage(nx=SIZE, ny=SIZE, scale=SCALE, offset=(dx, dy)).array


def noisy(*images, seed=0) -> np.ndarray:
    return (sum(images) + np.random.default_rng(seed).normal(0, NOISE, (SIZE, SIZE))).astype(np.float32)


@pytest.fixture(scope="module")
def stamps():
    """Isolated; a neighbour 3.6" away; a bright neighbour 1.8" away; empty sky; a faint galaxy."""
    return np.stack([noisy(galaxy()), noisy(galaxy(), galaxy(dx=18)), noisy(galaxy(), galaxy(4e4, dx=9, dy=-3)),
                     noisy(np.zeros((SIZE, SIZE))), noisy(galaxy(flux=150))])


@pytest.fixture(scope="module")
def segments(stamps):
    return segment(stamps, stamp_noise_sigma(stamps))


def test_an_isolated_galaxy_has_no_neighbour_and_nothing_masked(segments):
    """The galaxy alone: nothing masked, no neighbour, blendedness 0, no flag."""
    assert segments.n_neighbours[0] == 0 and not segments.mask[0].any()
    assert segments.blendedness[0] == 0 and not segments.flags["flag_blended"][0]


def test_a_neighbour_is_masked_and_the_galaxy_is_not(segments):
    """The neighbour's pixels are masked; the galaxy's centre is not."""
    assert segments.n_neighbours[1] == 1
    assert segments.mask[1][32, 32 + 18] and not segments.mask[1][29:35, 29:35].any()


def test_a_close_bright_neighbour_is_flagged_blended(segments):
    """A neighbour twice as bright 1.8" away puts light under the galaxy: flagged, a far one is not."""
    assert segments.blendedness[2] > BLENDED and segments.flags["flag_blended"][2]
    assert segments.blendedness[1] < segments.blendedness[2]


def test_a_stamp_without_a_central_source_is_flagged_undetected(segments):
    """Empty sky and a galaxy below the threshold: flag_undetected (still measured), nothing masked."""
    assert segments.flags["flag_undetected"][3] and segments.flags["flag_undetected"][4]
    assert not segments.flags["flag_undetected"][:3].any()
    assert not segments.flags["flag_centre_masked"].any()


def test_a_masked_centre_is_flagged(stamps):
    """Bad pixels over the stamp's centre: flag_centre_masked (the stamp is not measured)."""
    unusable = np.zeros(stamps.shape, bool)
    unusable[0, 26:38, 26:38] = True
    segments = segment(stamps, stamp_noise_sigma(stamps), unusable)
    assert segments.flags["flag_centre_masked"].tolist() == [True, False, False, False, False]


def test_stamps_not_asked_for_are_left_alone(stamps):
    """Only the stamps ``todo`` are segmented."""
    todo = np.array([False, True, False, False, False])
    segments = segment(stamps, stamp_noise_sigma(stamps), todo=todo)
    assert segments.mask[[0, 2, 3, 4]].sum() == 0 and np.isnan(segments.blendedness[[0, 2, 3, 4]]).all()
    assert segments.n_neighbours[1] == 1


def test_masked_pixels_do_not_move_the_fit():
    """The batch fit of a galaxy with a neighbour 4" away masked finds its flux; without the mask, not."""
    from galcae.config import load_stage

    cfg = load_stage("simulate", "survey", ["psf.fwhm=0.8", "psf.beta=3.5"])
    sky = 400.0
    truth = {"flux": 2e4, "half_light_radius": 0.5, "sersic_n": 1.0, "g1": 0.0, "g2": 0.0,
             "x": SIZE / 2, "y": SIZE / 2}
    neighbour = galaxy(3e4, dx=20)
    rng = np.random.default_rng(3)
    image = galaxy() + neighbour
    image = (image + rng.normal(0, np.sqrt((np.clip(image, 0, None) + sky) / cfg.noise.gain
                                          + (cfg.noise.read_noise / cfg.noise.gain) ** 2))).astype(np.float32)
    segments = segment(image[None], stamp_noise_sigma(image[None]))
    conditions = {"psf_fwhm": 0.8, "psf_beta": 3.5, "sky_level": sky}
    guess = {k: np.array([v * (1.1 if k in ("flux", "half_light_radius") else 1)]) for k, v in truth.items()}
    masked = fit_batch(image[None], cfg, conditions, guess, mask=segments.mask)
    unmasked = fit_batch(image[None], cfg, conditions, guess)
    assert abs(masked["flux"][0] / truth["flux"] - 1) < 3 * masked["flux_err"][0] / truth["flux"] + 0.01
    assert unmasked["flux"][0] > masked["flux"][0] + 3 * masked["flux_err"][0]


def test_a_cubes_mask_hdu_masks_its_pixels(tiny_run, tiny_dataset, tmp_path):
    """A MASK HDU (non-zero = bad) of one stamp's shape masks those pixels in every stamp."""
    from astropy.io import fits
    from astropy.table import QTable

    from galcae.cli import main

    images = tiny_dataset.load_images(np.arange(3))
    mask = np.zeros(images.shape[1:], np.uint8)
    mask[0, :] = 1
    fits.HDUList([fits.PrimaryHDU(images), fits.ImageHDU(mask, name="MASK")]).writeto(tmp_path / "cube.fits")
    assert main(["infer", str(tiny_run), str(tmp_path / "cube.fits"), "-o", str(tmp_path / "c.parquet")]) == 0
    catalog = QTable.read(tmp_path / "c.parquet")
    assert catalog["flag_nan_pixels"].all() and np.isfinite(catalog["flux"]).all()


def test_a_mask_of_the_wrong_shape_is_refused(tiny_run, tiny_dataset, tmp_path, capsys):
    """A MASK HDU of neither the cube's nor one stamp's shape: one line naming the file and HDU."""
    from astropy.io import fits

    from galcae.cli import main

    images = tiny_dataset.load_images(np.arange(3))
    fits.HDUList([fits.PrimaryHDU(images), fits.ImageHDU(np.zeros((5, 5), np.uint8), name="MASK")]).writeto(
        tmp_path / "cube.fits")
    assert main(["infer", str(tiny_run), str(tmp_path / "cube.fits"), "-o", str(tmp_path / "c.parquet")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "cube.fits[MASK]: mask shape (5, 5)" in error[0]
