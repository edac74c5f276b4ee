import numpy as np
import pytest

from galcae import simulate as sim
from galcae.dataset import Dataset
from galcae.physics import render_noiseless
from galcae.simulate import draw_parameters, render_chunk, simulate_dataset

from conftest import tiny_sim

ROW = {"flux": 20000.0, "half_light_radius": 0.5, "sersic_n": 1.0, "ellipticity": 0.3,
       "position_angle": 30.0, "x": 15.3, "y": 17.8, "seed": 7}


def _moments(image):
    yy, xx = np.indices(image.shape) + 0.5  # galcae pixel centres
    w = image / image.sum()
    cx, cy = (w * xx).sum(), (w * yy).sum()
    qxx, qyy, qxy = (w * (xx - cx) ** 2).sum(), (w * (yy - cy) ** 2).sum(), (w * (xx - cx) * (yy - cy)).sum()
    return cx, cy, np.rad2deg(0.5 * np.arctan2(2 * qxy, qxx - qyy)) % 180


def test_noiseless_flux_matches_requested_flux():
    """A galaxy the stamp holds sums to its requested flux (GalSim's default accuracy)."""
    image = render_noiseless(tiny_sim(), ROW).array
    assert image.sum() == pytest.approx(ROW["flux"], rel=5e-3)


def test_centre_and_position_angle_follow_the_documented_convention():
    """The light centroid sits at (x, y) in galcae pixels; the major axis at the position angle."""
    cx, cy, pa = _moments(render_noiseless(tiny_sim(), ROW).array)
    assert (cx, cy) == (pytest.approx(ROW["x"], abs=0.02), pytest.approx(ROW["y"], abs=0.02))
    assert pa == pytest.approx(ROW["position_angle"], abs=1.0)


def test_noisy_flux_is_unbiased_and_snr_matches_noise():
    """Sky-subtracted noisy stamps sum to the flux within the noise; S/N grows with flux."""
    cfg = tiny_sim("n_galaxies=40", "ranges.flux=[20000,20000]")
    out = render_chunk(cfg, draw_parameters(cfg))
    excess = out["images"].sum(axis=(1, 2)) - 20000 * out["flux_in_stamp"]
    sky_sigma_total = np.sqrt((cfg.noise.sky_level + cfg.noise.read_noise**2) * 32 * 32 + 20000)
    assert abs(excess.mean()) < 4 * sky_sigma_total / np.sqrt(40)
    assert np.std(excess) == pytest.approx(sky_sigma_total, rel=0.35)
    assert (out["status"] == "ok").all() and np.all(out["snr"] > 50)


def test_sweep_varies_one_parameter_and_fixes_the_rest():
    """A controlled set spaces the swept parameter evenly over its range and fixes the others."""
    cfg = tiny_sim("n_galaxies=5", "sweep.parameter=half_light_radius", "sweep.fixed.x=16",
                   "sweep.fixed.y=16")
    table = draw_parameters(cfg)
    np.testing.assert_allclose(table["half_light_radius"], np.linspace(0.3, 1.0, 5))
    assert np.all(table["flux"] == 10000.0) and np.all(table["x"] == 16.0)
    assert len(set(table["seed"])) == 5


def test_log_uniform_draws_span_decades_evenly():
    """log_uniform draws flux evenly in log10."""
    cfg = tiny_sim("n_galaxies=4000", "log_uniform=[flux]", "ranges.flux=[100,100000]")
    logf = np.log10(draw_parameters(cfg)["flux"])
    assert np.mean(logf < 3.5) == pytest.approx(0.5, abs=0.03)


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


def test_dataset_files_units_and_config_echo(tiny_dataset):
    """The dataset holds N x H x W float32 images, a truth table with units, and its config."""
    assert tiny_dataset.images.shape == (64, 32, 32) and tiny_dataset.images.dtype == np.float32
    import pyarrow.parquet as pq

    schema = pq.read_schema(tiny_dataset.path / "params.parquet")
    assert schema.field("flux").metadata[b"unit"] == b"adu"
    assert schema.field("half_light_radius").metadata[b"unit"] == b"arcsec"
    for column in ("seed", "snr", "flux_in_stamp", "status", "g1", "g2", "sersic_n"):
        assert column in schema.names
    assert Dataset.open(tiny_dataset.path).config == tiny_sim()


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


def test_a_busy_dashboard_port_does_not_disturb_a_local_cluster():
    """Another Dask cluster (a notebook's, a second galcae run) holding port 8787 neither
    stops nor warns a galcae run: its scheduler takes a free port."""
    import socket

    from galcae.distributed import dask_client

    with socket.socket() as held:
        try:
            held.bind(("127.0.0.1", 8787))
            held.listen()
        except OSError:
            pass  # taken already: the same situation
        with dask_client(2) as client:
            assert client.submit(sum, [1, 2]).result() == 3
