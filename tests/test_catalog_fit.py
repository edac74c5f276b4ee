"""``galcae fit``: a catalog of classical fits, read like ``galcae infer``'s inputs."""

from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable

from galcae.cli import main

TINY = ["--set", "stamp_size=32"]


@pytest.fixture(scope="module")
def fitted(tiny_dataset, tmp_path_factory):
    """`galcae fit` of a cube of a real stamp, an all-NaN and an all-zero stamp."""
    tmp = tmp_path_factory.mktemp("fit")
    images = tiny_dataset.load_images(np.arange(3)).copy()
    images[1] = np.nan
    images[2] = 0.0
    cube = tmp / "cube.fits"
    fits.writeto(cube, images)
    out = tmp / "fit.parquet"
    assert main(["fit", str(cube), "-o", str(out), *TINY]) == 0
    return SimpleNamespace(cube=cube, out=out, cat=QTable.read(out))


def test_fit_catalog_has_a_row_per_stamp_with_units(fitted):
    """One row per stamp; values and timings carry units."""
    cat = fitted.cat
    assert len(cat) == 3 and str(cat["flux"].unit) == "adu" and str(cat["seconds"].unit) == "s"


def test_empty_and_nan_stamps_are_flagged_rows(fitted):
    """An all-NaN and an all-zero stamp are flagged empty and failed; the real one fits 'ok'."""
    cat = fitted.cat
    assert list(cat["flag_empty"]) == [False, True, True]
    assert list(cat["flag_fit_failed"]) == [False, True, True] and cat["status"][0] == "ok"


def test_a_real_stamp_fits_its_true_flux(fitted, tiny_dataset):
    """The real stamp's fitted flux is its truth within 20%."""
    assert fitted.cat["flux"][0].value == pytest.approx(tiny_dataset.params["flux"][0], rel=0.2)


def test_a_failed_fit_is_nan_with_its_reason(fitted):
    """A stamp that cannot be fitted has NaN values and a status saying why."""
    cat = fitted.cat
    assert np.isnan(cat["flux"][1].value) and cat["status"][1].startswith("failed")


def test_existing_fit_catalog_is_refused(fitted, capsys):
    """Fitting onto an existing catalog is refused, pointing to --overwrite."""
    assert main(["fit", str(fitted.cube), "-o", str(fitted.out), *TINY]) == 1  # exists: refused
    assert "--overwrite" in capsys.readouterr().err


def test_a_neighbours_model_is_subtracted_before_the_classical_fit(tmp_path):
    """As galcae infer's refinement: the neighbour 2.4" away is modelled, its model subtracted,
    and the galaxy's flux found within a few of its (widened) errors."""
    import galsim

    psf = galsim.Moffat(beta=3.5, fwhm=0.8)

    def draw(flux, r_half, n, dx=0.0):
        return galsim.Convolve(galsim.Sersic(n=n, half_light_radius=r_half, flux=flux), psf).drawImage(
            nx=64, ny=64, scale=0.2, offset=(dx, 0)).array

    rng = np.random.default_rng(1)
    image = draw(2e4, 0.5, 1.0) + draw(4e4, 0.8, 2.0, dx=12)
    stamps = (image + rng.normal(0, 6.0, (2, 64, 64))).astype(np.float32)
    fits.writeto(tmp_path / "cube.fits", stamps)
    out = tmp_path / "fit.parquet"
    assert main(["fit", str(tmp_path / "cube.fits"), "-o", str(out), "--config", "survey", "--set", "psf.fwhm=0.8",
                 "--set", "psf.beta=3.5", "--set", "noise.sky_level=400"]) == 0
    cat = QTable.read(out)
    assert list(cat["neighbours_modelled"]) == [1, 1] and list(cat["n_neighbours"]) == [1, 1]
    flux, err = cat["flux"].value, cat["flux_err"].value
    assert (np.abs(flux - 2e4) < 4 * err + 0.01 * 2e4).all()
