"""Training on fresh galaxies: stamps drawn like the dataset's, the CCD noise, resumption,
and the option's checks."""

import json

import galsim
import numpy as np
import pytest
import torch

from galcae.conditions import stamp_noise_sigma
from galcae.config import ConfigError, TrainConfig, load_stage
from galcae.fresh import FreshGalaxies, epoch_seed
from galcae.physics import ccd_noise, pixel_variance, render_noiseless
from galcae.simulate import simulate_dataset
from galcae.train import train_model

from conftest import interrupt_in_second_epoch, tiny_sim, tiny_train


def rows_of(dataset, ids):
    return {k: v[ids] for k, v in dataset.params.items()}


def test_fresh_noiseless_stamps_are_galsims(survey_dataset):
    """The noiseless stamps of fresh galaxies are what GalSim draws for the same parameters."""
    ids = np.arange(12)
    rows = rows_of(survey_dataset, ids)
    drawn = FreshGalaxies(survey_dataset.config).noiseless(rows).numpy()
    for i in ids:
        row = {k: v[i] for k, v in rows.items()}
        expected = render_noiseless(survey_dataset.config.for_galaxy(row), row).array
        assert np.abs(drawn[i] - expected).max() < 1e-3 * expected.max(), i


def test_fresh_stamps_have_the_datasets_noise_and_flux(survey_dataset):
    """The dataset's own galaxies drawn fresh: the same sky noise on the border (as the
    noise_sigma condition measures it) and total fluxes that differ by their noise only."""
    ids = survey_dataset.usable
    rows = rows_of(survey_dataset, ids)
    fresh = FreshGalaxies(survey_dataset.config).images(rows, torch.Generator().manual_seed(1))
    data = survey_dataset.load_images()[ids]
    ratio = stamp_noise_sigma(fresh) / stamp_noise_sigma(data)
    assert np.median(ratio) == pytest.approx(1.0, abs=0.03)
    n = survey_dataset.config.noise
    mean = FreshGalaxies(survey_dataset.config).noiseless(rows).double().numpy()
    variance = pixel_variance(mean, rows["sky_level"][:, None, None], n.gain, n.read_noise).sum(axis=(1, 2))
    z = (fresh.sum(axis=(1, 2)) - data.sum(axis=(1, 2))) / np.sqrt(2 * variance)
    assert abs(np.mean(z)) < 0.5 and 0.7 < np.std(z) < 1.3


def test_ccd_noise_is_galsims():
    """The torch CCD noise has GalSim's CCDNoise mean and variance (pixel_variance)."""
    mean, sky, gain, read_noise = 40.0, 150.0, 2.0, 5.0
    drawn = ccd_noise(torch.full((200, 200), mean, dtype=torch.float64), sky, gain, read_noise,
                      torch.Generator().manual_seed(0)).numpy()
    image = galsim.Image(np.full((200, 200), mean))
    image.addNoise(galsim.CCDNoise(galsim.BaseDeviate(3), sky_level=sky, gain=gain, read_noise=read_noise))
    expected = pixel_variance(np.float64(mean), sky, gain, read_noise)
    for sample in (drawn, image.array):
        assert sample.mean() == pytest.approx(mean, abs=0.1)
        assert sample.var() == pytest.approx(expected, rel=0.03)


def test_each_epoch_draws_new_galaxies_reproducibly(survey_dataset):
    """An epoch's galaxies are a function of the seed and the epoch: new each epoch, the same
    when drawn again."""
    fresh = FreshGalaxies(survey_dataset.config)
    first, again, second = (fresh.draw(16, epoch_seed(0, e))["flux"] for e in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert not np.any(first == second)


def test_fresh_training_resumes_exactly(tiny_dataset, tmp_path, monkeypatch):
    """A fresh-galaxy run interrupted in epoch 2 and resumed ends as an uninterrupted one."""
    cfg = tiny_train(epochs=2, fresh_galaxies=True)
    straight = train_model(tiny_dataset.path, tmp_path / "a", cfg)
    interrupt_in_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_dataset.path, tmp_path / "b", cfg)
    monkeypatch.undo()
    resumed = train_model(tiny_dataset.path, tmp_path / "b", cfg, resume=True)
    for (name, p), q in zip(straight.network.state_dict().items(), resumed.network.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert history[0]["images_per_second"] > 0 and len(history) == 2


def test_fresh_galaxies_train_on_other_images_than_the_dataset(tiny_dataset, tiny_run, tmp_path):
    """With fresh_galaxies the weights differ from a run on the dataset's images."""
    fresh = train_model(tiny_dataset.path, tmp_path / "fresh", tiny_train(fresh_galaxies=True))
    still = train_model(tiny_dataset.path, tmp_path / "still", tiny_train())
    weight = "encoder.0.weight"
    assert not torch.equal(fresh.network.state_dict()[weight], still.network.state_dict()[weight])


@pytest.mark.parametrize("value", ["maybe", 1, [True]])
def test_fresh_galaxies_must_be_true_or_false(value):
    with pytest.raises(ConfigError, match="fresh_galaxies"):
        load_stage("train", "paper", [f"fresh_galaxies={json.dumps(value)}"])


def test_fresh_galaxies_from_a_sweep_are_refused(tmp_path):
    """A controlled sweep has no priors to draw more galaxies from."""
    sweep = simulate_dataset(tiny_sim("n_galaxies=12", "sweep.parameter=flux"), tmp_path / "sweep")
    with pytest.raises(ConfigError, match="fresh_galaxies: .* sweep of flux"):
        train_model(sweep.path, tmp_path / "run", TrainConfig(epochs=1, fresh_galaxies=True))
