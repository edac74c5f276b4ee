"""Stamps cleaned before measuring: NaN pixels and empty stamps flagged per row."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable

from galcae.cli import main


@pytest.fixture(scope="module")
def odd_catalog(dropout_run, tiny_dataset, tmp_path_factory):
    """The catalog of three stamps: one with a NaN pixel, one all zero, one clean."""
    tmp = tmp_path_factory.mktemp("stamps")
    images = tiny_dataset.load_images(np.arange(3)).copy()
    images[0, 3, 4] = np.nan
    images[1] = 0.0
    fits.writeto(tmp / "odd.fits", images)
    assert main(["infer", str(dropout_run), str(tmp / "odd.fits"), "-o", str(tmp / "cat.parquet")]) == 0
    return QTable.read(tmp / "cat.parquet")


def test_nan_pixels_are_flagged_and_the_stamp_still_measured(odd_catalog):
    """A stamp with a NaN pixel is flagged flag_nan_pixels, and measured."""
    assert list(odd_catalog["flag_nan_pixels"]) == [True, False, False]
    assert np.isfinite(odd_catalog["flux"][0])


def test_empty_stamps_are_flagged_and_not_measured(odd_catalog):
    """An all-zero stamp is flagged flag_empty, its values NaN."""
    assert list(odd_catalog["flag_empty"]) == [False, True, False] and np.isnan(odd_catalog["flux"][1])
