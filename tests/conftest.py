"""Shared tiny fixtures: a 32x32-pixel dataset of 64 galaxies and a one-epoch run."""

import pytest

from galcae.config import TrainConfig, load_stage
from galcae.simulate import simulate_dataset
from galcae.train import train_model

# Small, centred galaxies on 32x32 stamps: fast to render and to train on.
TINY = ["n_galaxies=64", "stamp_size=32", "chunk_size=16", "ranges.x=[14,18]", "ranges.y=[14,18]",
        "ranges.half_light_radius=[0.3,1.0]", "ranges.flux=[2000,50000]"]
# The tiny setup with survey-like conditions drawn per galaxy.
TINY_SURVEY = TINY + ["psf.profile=moffat", "psf.fwhm=[0.5,1.2]", "psf.beta=[2.5,5]",
                      "noise.sky_level=[100,2000]", "log_uniform=[flux, half_light_radius]"]
SEVEN = ("flux", "half_light_radius", "sersic_n", "g1", "g2", "x", "y")


def tiny_sim(*extra):
    """The tiny simulation config with extra ``key=value`` overrides."""
    return load_stage("simulate", "paper", TINY + list(extra))


def tiny_train(**changes):
    return TrainConfig(**{"epochs": 1, "batch_size": 16, **changes})


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    return simulate_dataset(tiny_sim(), tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def survey_dataset(tmp_path_factory):
    return simulate_dataset(load_stage("simulate", "paper", TINY_SURVEY),
                            tmp_path_factory.mktemp("data") / "survey")


@pytest.fixture(scope="session")
def survey_run(survey_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "survey"
    train_model(survey_dataset.path, run_dir, tiny_train(
        epochs=2, supervised=SEVEN, log_scaled=("flux", "half_light_radius"),
        conditions=("psf_fwhm", "psf_beta", "noise_sigma"), predict_variance=True,
        nll_beta=0.5, channels=(8, 16, 32), head_hidden=16))  # the survey preset's options
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    train_model(tiny_dataset.path, run_dir, tiny_train())
    return run_dir
