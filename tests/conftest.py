"""Shared tiny fixtures: a 32x32-pixel dataset of 64 galaxies, runs trained on it, and the
inputs several test files measure (a FITS cube, a field)."""

import dataclasses
import logging
from types import SimpleNamespace

import galsim
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from galcae.config import TrainConfig, load_stage
from galcae.simulate import simulate_dataset
from galcae.train import train_config_of, train_model

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


def tan_wcs(size: int, scale: float) -> WCS:
    """A TAN WCS centred on an image of ``size`` pixels of ``scale`` arcsec."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [size / 2, size / 2]
    wcs.wcs.cdelt = [-scale / 3600, scale / 3600]
    return wcs


def write_field(path, positions, size=160, scale=0.2):
    """A noisy field with Sérsic galaxies at ``positions`` (numpy pixel coords), a TAN WCS,
    a VARIANCE and a MASK HDU; returns the WCS."""
    rng = np.random.default_rng(3)
    image = galsim.ImageF(size, size, scale=scale)
    psf = galsim.Gaussian(fwhm=0.7)
    for x, y in positions:
        gal = galsim.Convolve(galsim.Sersic(n=1.0, half_light_radius=0.6, flux=20000.0), psf)
        gal.drawImage(image, center=galsim.PositionD(x + 1, y + 1), add_to_image=True)
    sky = 100.0
    data = image.array + sky + rng.normal(0, np.sqrt(sky + 25.0), image.array.shape)
    wcs = tan_wcs(size, scale)
    mask = np.zeros(data.shape, np.int16)
    mask[5, 5] = 1
    fits.HDUList([fits.PrimaryHDU(data.astype(np.float32), header=wcs.to_header()),
                  fits.ImageHDU(np.full(data.shape, sky + 25.0, np.float32), name="VARIANCE"),
                  fits.ImageHDU(mask, name="MASK")]).writeto(path)
    return wcs


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


@pytest.fixture(scope="session")
def dropout_run(tiny_dataset, tmp_path_factory):
    """A tiny model trained a few epochs with dropout, so it both predicts and gives MC errors."""
    run_dir = tmp_path_factory.mktemp("runs") / "dropout"
    train_model(tiny_dataset.path, run_dir, tiny_train(epochs=4, dropout=0.1))
    return run_dir


@pytest.fixture(scope="session")
def sersic_run(survey_run, survey_dataset, tmp_path_factory):
    """The survey run's encoder trained one epoch more under a new ``sersic`` decoder;
    ``path`` and the messages ``galcae.train`` logged while it trained."""
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("galcae.train"), Collect()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        run = tmp_path_factory.mktemp("runs") / "sersic"
        cfg = dataclasses.replace(train_config_of(survey_run), decoder="sersic", epochs=1)
        train_model(survey_dataset.path, run, cfg, init=survey_run)  # the conv model's encoder, a new decoder
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return SimpleNamespace(path=run, log="\n".join(messages))


@pytest.fixture(scope="session")
def cube(tiny_dataset, tmp_path_factory):
    """The tiny dataset's 64 stamps as a FITS cube in an image HDU named STAMPS."""
    path = tmp_path_factory.mktemp("fits") / "cube.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(tiny_dataset.load_images(), name="STAMPS")]
                 ).writeto(path)
    return path


@pytest.fixture(scope="session")
def seeing_cube(tmp_path_factory):
    """Six bright survey-like stamps, each under its own Moffat PSF: a cube whose header
    cannot state the PSF, and the truth of every stamp."""
    from galcae.simulate import draw_parameters, render_chunk

    cfg = load_stage("simulate", "survey", ["n_galaxies=6", "seed=21", "ranges.flux=[20000, 200000]",
                                            "ranges.half_light_radius=[0.4, 1.2]"])
    truth = draw_parameters(cfg)
    path = tmp_path_factory.mktemp("seeing") / "seeing.fits"
    fits.PrimaryHDU(render_chunk(cfg, truth)["images"]).writeto(path)
    return path, truth


@pytest.fixture
def failed_renders(tiny_dataset, tmp_path):
    """A copy of the tiny dataset whose first 10 galaxies GalSim could not render (status)."""
    import shutil

    import pyarrow.parquet as pq

    copy = tmp_path / "data"
    shutil.copytree(tiny_dataset.path, copy)
    table = pq.read_table(copy / "params.parquet")
    status = table.column("status").to_numpy(zero_copy_only=False).copy()
    status[:10] = "GalSimFFTSizeError: too big"
    table = table.set_column(table.column_names.index("status"), table.schema.field("status"),
                             [status.tolist()])
    pq.write_table(table, copy / "params.parquet")
    return copy


def interrupt_in_second_epoch(monkeypatch):
    """Make training raise KeyboardInterrupt in its second epoch (as Ctrl-C would, after the
    first epoch's checkpoint); undo with ``monkeypatch.undo()``."""
    import galcae.train as train_module

    real, calls = train_module._evaluate_loss, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(train_module, "_evaluate_loss", interrupted)


@pytest.fixture(scope="session")
def aberrated_psf() -> np.ndarray:
    """A PSF image that is not a Moffat: a sheared Kolmogorov through aberrated optics, drawn
    with the pixel at 0.2″, 33 x 33, unit sum."""
    psf = galsim.Convolve(galsim.Kolmogorov(fwhm=0.6).shear(e1=0.06, e2=-0.04),
                          galsim.OpticalPSF(lam_over_diam=0.08, defocus=0.3, coma1=0.2, astig2=-0.2,
                                            obscuration=0.3))
    image = psf.drawImage(nx=33, ny=33, scale=0.2).array.astype(np.float64)
    return image / image.sum()
