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
