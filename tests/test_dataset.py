"""A dataset on disk: images, the truth table with units, the config echo, usable rows."""


import numpy as np
import pyarrow.parquet as pq

from galcae.dataset import Dataset

from conftest import tiny_sim


def test_images_are_n_by_h_by_w_float32(tiny_dataset):
    """The dataset holds N x H x W float32 images."""
    assert tiny_dataset.images.shape == (64, 32, 32) and tiny_dataset.images.dtype == np.float32


def test_truth_table_carries_units(tiny_dataset):
    """The Parquet truth table states each physical column's unit in its field metadata."""
    schema = pq.read_schema(tiny_dataset.path / "params.parquet")
    assert schema.field("flux").metadata[b"unit"] == b"adu"
    assert schema.field("half_light_radius").metadata[b"unit"] == b"arcsec"


def test_truth_table_holds_seeds_snr_status_and_shears(tiny_dataset):
    """Besides the drawn parameters the table holds the seed, S/N, flux in stamp, status and shear."""
    schema = pq.read_schema(tiny_dataset.path / "params.parquet")
    for column in ("seed", "snr", "flux_in_stamp", "status", "g1", "g2", "sersic_n"):
        assert column in schema.names


def test_dataset_echoes_its_config(tiny_dataset):
    """A reopened dataset gives back the config it was simulated from."""
    assert Dataset.open(tiny_dataset.path).config == tiny_sim()


def test_usable_rows_exclude_galaxies_that_failed_to_render(failed_renders):
    """Rows whose status is not 'ok' are not usable."""
    copy = failed_renders
    assert len(Dataset.open(copy).usable) == 54
