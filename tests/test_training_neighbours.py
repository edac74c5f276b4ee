"""Training sets with neighbours, and the network shown them as galcae infer shows it a stamp:
segmented, the other sources' pixels replaced by sky noise."""

import json

import numpy as np
import pytest
import torch

from galcae.catalog.segment import neighbours_as_sky
from galcae.config import ConfigError, load_stage
from galcae.fresh import FreshGalaxies
from galcae.simulate import draw_parameters, neighbour_row, render_chunk, simulate_dataset
from galcae.train import train_model

from conftest import TINY_SURVEY, tiny_train

# 64-pixel stamps, so that a neighbour 1.6-5" away is inside them.
NEIGHBOURS = [*TINY_SURVEY, "stamp_size=64", "ranges.x=[30,34]", "ranges.y=[30,34]", "neighbours.fraction=0.5"]


def sim(*extra):
    return load_stage("simulate", "paper", [*NEIGHBOURS, *extra])


def test_neighbours_are_drawn_in_their_fraction_at_their_distances():
    cfg = sim("n_galaxies=2000")
    table = draw_parameters(cfg)
    present = table["nb_flux"] > 0
    assert 0.45 < present.mean() < 0.55
    distance = np.hypot(table["nb_x"] - table["x"], table["nb_y"] - table["y"]) * cfg.pixel_scale
    assert distance.min() >= 1.6 - 1e-9 and distance.max() <= 5.0 + 1e-9
    ratio = table["nb_flux"][present] / table["flux"][present]
    assert ratio.min() >= 0.1 - 1e-9 and ratio.max() <= 3.0 + 1e-9
    assert neighbour_row({k: v[0] for k, v in table.items()}) is None or present[0]


def test_a_config_without_neighbours_draws_what_it_drew_before():
    plain = draw_parameters(sim("neighbours.fraction=0"))
    crowded = draw_parameters(sim())
    assert not any(k.startswith("nb_") for k in plain)
    for name, values in plain.items():
        np.testing.assert_array_equal(values, crowded[name])


def test_bad_neighbour_settings_are_refused():
    with pytest.raises(ConfigError, match="neighbours.fraction"):
        sim("neighbours.fraction=1.5")


def test_the_neighbour_is_in_the_image_but_not_in_the_galaxys_snr():
    cfg = sim("n_galaxies=16")
    table = draw_parameters(cfg)
    alone = render_chunk(load_stage("simulate", "paper", [*NEIGHBOURS, "n_galaxies=16"]),
                         {**{k: v for k, v in table.items() if not k.startswith("nb_")}})
    crowded = render_chunk(cfg, table)
    present = table["nb_flux"] > 0
    np.testing.assert_array_equal(crowded["snr"], alone["snr"])
    extra = (crowded["images"] - alone["images"]).sum(axis=(1, 2))  # same noise seeds: the neighbour's light
    assert (extra[~present] == 0).all() and (extra[present] > 0.3 * table["nb_flux"][present]).all()


def test_fresh_stamps_show_their_neighbours_as_sky_noise():
    """Drawn by the renderer with their neighbours, then masked as inference masks them:
    where a bright neighbour was, the stamp is noise about zero."""
    cfg = sim("n_galaxies=64", "neighbours.fraction=1", "neighbours.flux_ratio=[2,3]")
    fresh = FreshGalaxies(cfg, mask_neighbours=True)
    rows, images, _ = next(fresh.epoch(64, seed=3, conditions=()))
    raw = FreshGalaxies(cfg).images(rows, torch.Generator().manual_seed(3))
    at = (np.clip(np.round(rows["nb_y"] - 0.5).astype(int), 0, 63), np.clip(np.round(rows["nb_x"] - 0.5).astype(int),
                                                                            0, 63))
    inside = (rows["nb_x"] > 2) & (rows["nb_x"] < 62) & (rows["nb_y"] > 2) & (rows["nb_y"] < 62)
    sigma = np.sqrt(rows["sky_level"])
    peak_raw = raw[np.arange(64), at[0], at[1]] / sigma
    peak = images[np.arange(64), at[0], at[1]] / sigma
    bright = inside & (peak_raw > 10)
    assert bright.sum() > 20
    assert np.median(np.abs(peak[bright])) < 2


def test_neighbours_as_sky_leaves_an_isolated_galaxy_alone(survey_dataset):
    images = survey_dataset.load_images()[:16].copy()
    before = images.copy()
    neighbours_as_sky(images, np.random.default_rng(0))
    assert np.mean([np.array_equal(a, b) for a, b in zip(images, before)]) > 0.9


def test_a_model_trains_on_masked_neighbours(tmp_path):
    """A dataset with neighbours, masked for the network, trains (and fresh galaxies too)."""
    data = simulate_dataset(sim("n_galaxies=48", "chunk_size=16"), tmp_path / "data")
    for fresh in (False, True):
        run = tmp_path / f"run{fresh}"
        train_model(data.path, run, tiny_train(
            supervised=("flux", "half_light_radius"), mask_neighbours=True, fresh_galaxies=fresh,
            conditions=("psf_fwhm", "psf_beta", "noise_sigma"), channels=(4, 8, 8)))
        assert json.loads((run / "model.json").read_text())["train_config"]["mask_neighbours"]
