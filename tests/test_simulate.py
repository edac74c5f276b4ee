"""Drawing parameters and rendering noisy stamps into a dataset."""

import numpy as np
import pytest

from galcae import simulate as sim
from galcae.config import load_stage
from galcae.dataset import Dataset
from galcae.simulate import draw_parameters, render_chunk, simulate_dataset

from conftest import tiny_sim


@pytest.fixture(scope="module")
def fixed_flux_chunk():
    """40 galaxies of flux 20000 rendered with noise, and their config."""
    cfg = tiny_sim("n_galaxies=40", "ranges.flux=[20000,20000]")
    return cfg, render_chunk(cfg, draw_parameters(cfg))


def _excess(cfg, out):
    excess = out["images"].sum(axis=(1, 2)) - 20000 * out["flux_in_stamp"]
    sky_sigma_total = np.sqrt((cfg.noise.sky_level + cfg.noise.read_noise**2) * 32 * 32 + 20000)
    return excess, sky_sigma_total


def test_noisy_flux_is_unbiased(fixed_flux_chunk):
    """Sky-subtracted noisy stamps sum to the flux in the stamp within the noise."""
    excess, sky_sigma_total = _excess(*fixed_flux_chunk)
    assert abs(excess.mean()) < 4 * sky_sigma_total / np.sqrt(40)


def test_noise_of_the_stamp_sum_is_sky_plus_read_plus_shot_noise(fixed_flux_chunk):
    """The scatter of the stamp sums is the summed sky, read and shot noise."""
    excess, sky_sigma_total = _excess(*fixed_flux_chunk)
    assert np.std(excess) == pytest.approx(sky_sigma_total, rel=0.35)


def test_rendered_chunk_reports_status_and_snr(fixed_flux_chunk):
    """Every galaxy of a chunk rendered 'ok', with the S/N of a bright galaxy."""
    _, out = fixed_flux_chunk
    assert (out["status"] == "ok").all() and np.all(out["snr"] > 50)


@pytest.fixture(scope="module")
def half_light_sweep():
    cfg = tiny_sim("n_galaxies=5", "sweep.parameter=half_light_radius", "sweep.fixed.x=16",
                   "sweep.fixed.y=16")
    return draw_parameters(cfg)


def test_sweep_spaces_the_swept_parameter_evenly(half_light_sweep):
    """A controlled set spaces the swept parameter evenly over its range."""
    np.testing.assert_allclose(half_light_sweep["half_light_radius"], np.linspace(0.3, 1.0, 5))


def test_sweep_fixes_the_other_parameters(half_light_sweep):
    """A controlled set fixes every other parameter (at its sweep.fixed value or the default)."""
    assert np.all(half_light_sweep["flux"] == 10000.0) and np.all(half_light_sweep["x"] == 16.0)


def test_sweep_draws_each_galaxy_its_own_noise_seed(half_light_sweep):
    """The galaxies of a controlled set have distinct noise seeds."""
    assert len(set(half_light_sweep["seed"])) == 5


def test_log_uniform_draws_span_decades_evenly():
    """log_uniform draws flux evenly in log10."""
    cfg = tiny_sim("n_galaxies=4000", "log_uniform=[flux]", "ranges.flux=[100,100000]")
    logf = np.log10(draw_parameters(cfg)["flux"])
    assert np.mean(logf < 3.5) == pytest.approx(0.5, abs=0.03)


@pytest.fixture(scope="module")
def survey_draws():
    return draw_parameters(load_stage("simulate", "survey", ["n_galaxies=2000"]))


def test_survey_preset_draws_centred_cutouts(survey_draws):
    """The survey preset's galaxies lie within 2 pixels of the stamp centre."""
    t = survey_draws
    assert np.all(np.abs(t["x"] - 32) <= 2) and np.all(np.abs(t["y"] - 32) <= 2)


def test_survey_preset_draws_the_seeing_per_galaxy(survey_draws):
    """The survey preset draws each galaxy's PSF FWHM over its whole range, 0.5 to 1.2 arcsec."""
    t = survey_draws
    assert 0.5 <= t["psf_fwhm"].min() < 0.55 and 1.15 < t["psf_fwhm"].max() <= 1.2


def test_survey_preset_draws_flux_log_uniformly(survey_draws):
    """As many survey galaxies in each decade of flux."""
    t = survey_draws
    decades = np.histogram(np.log10(t["flux"]), bins=[np.log10(300), np.log10(3000),
                                                      np.log10(30000), np.log10(300000)])[0]
    assert decades.min() > 0.28 * len(t["flux"])


def test_survey_preset_draws_the_sky_log_uniformly(survey_draws):
    """The survey's sky level is log-uniform over 100-2000 ADU: its median is the geometric mean."""
    assert np.median(survey_draws["sky_level"]) == pytest.approx(np.sqrt(100 * 2000), rel=0.15)


def test_paper_preset_draws_one_fixed_psf_and_sky():
    """The paper's preset still draws exactly its old galaxies, under one fixed PSF and sky."""
    paper = draw_parameters(load_stage("simulate", "paper", ["n_galaxies=5"]))
    assert np.all(paper["psf_fwhm"] == 0.7) and np.all(paper["sky_level"] == 100.0)


def test_galsim_failure_is_recorded_not_dropped(tmp_path):
    """A galaxy GalSim cannot render keeps its row, a NaN image and the error in 'status'."""
    cfg = tiny_sim("n_galaxies=3", "max_fft_size=256", "ranges.half_light_radius=[4,5]",
                   "ranges.sersic_n=[3.9,4]")
    dataset = simulate_dataset(cfg, tmp_path / "failing")
    status = dataset.params["status"]
    assert len(dataset) == 3 and (status != "ok").all()
    assert "FFT" in status[0]
    assert np.isnan(dataset.load_images()).all() and dataset.usable.size == 0


def test_same_bytes_with_one_or_two_workers(tmp_path):
    """The same config gives byte-identical images and tables in-process and on 2 Dask workers."""
    cfg = tiny_sim("n_galaxies=24", "chunk_size=5")
    one = simulate_dataset(cfg, tmp_path / "one")
    two = simulate_dataset(cfg, tmp_path / "two", workers=2)
    assert one.load_images().tobytes() == two.load_images().tobytes()
    for name, values in one.params.items():
        np.testing.assert_array_equal(values, two.params[name])


def test_existing_output_is_refused_and_kept(tmp_path):
    """Simulating onto an existing dataset is refused and leaves it untouched."""
    cfg = tiny_sim("n_galaxies=2")
    first = simulate_dataset(cfg, tmp_path / "d")
    before = first.load_images().copy()
    with pytest.raises(FileExistsError, match="overwrite"):
        simulate_dataset(tiny_sim("n_galaxies=2", "seed=9"), tmp_path / "d")
    np.testing.assert_array_equal(Dataset.open(tmp_path / "d").load_images(), before)


def test_a_crash_leaves_no_half_written_dataset(tmp_path, monkeypatch):
    """An error mid-simulation leaves neither the dataset nor a temporary directory behind."""
    def broken(cfg, rows):
        raise RuntimeError("worker died")

    monkeypatch.setattr(sim, "render_chunk", broken)
    with pytest.raises(RuntimeError, match="worker died"):
        simulate_dataset(tiny_sim("n_galaxies=2"), tmp_path / "d")
    assert list(tmp_path.iterdir()) == []
