"""``galcae infer`` on real FITS files written here: cubes, stamps, a field, datasets."""

import json

import galsim
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable
from astropy.wcs import WCS

from galcae.catalog import infer as infer_module
from galcae.cli import main
from galcae.train import train_model

from conftest import tiny_train


@pytest.fixture(scope="session")
def dropout_run(tiny_dataset, tmp_path_factory):
    """A tiny model trained a few epochs with dropout, so it both predicts and gives MC errors."""
    run_dir = tmp_path_factory.mktemp("runs") / "dropout"
    train_model(tiny_dataset.path, run_dir, tiny_train(epochs=4, dropout=0.1))
    return run_dir


@pytest.fixture(scope="session")
def cube(tiny_dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("fits") / "cube.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(tiny_dataset.load_images(), name="STAMPS")]
                 ).writeto(path)
    return path


def run(*argv) -> int:
    return main(["infer", *map(str, argv)])


def test_cube_catalog_has_ids_units_flags_and_tracks_truth(dropout_run, cube, tiny_dataset, tmp_path):
    """One row per stamp, in order, with units, errors, flags and provenance; flux tracks the truth."""
    out = tmp_path / "cat.parquet"
    assert run(dropout_run, cube, "-o", out) == 0
    cat = QTable.read(out)
    assert len(cat) == 64 and list(cat["id"]) == list(range(64)) and list(cat["index"]) == list(range(64))
    assert set(cat["source"]) == {str(cube)}
    assert str(cat["flux"].unit) == "adu" and str(cat["half_light_radius_err"].unit) == "arcsec"
    assert np.all(cat["flux_err"].value > 0)
    assert not any(cat[f].any() for f in infer_module.FLAGS)
    assert cat.meta["model_sha256"] == json.loads((dropout_run / "model.json").read_text())["weights_sha256"]
    assert cat.meta["uncertainty"] == "heldout" and cat.meta["inputs"] == [str(cube)]
    truth = tiny_dataset.params["flux"]
    assert np.corrcoef(cat["flux"].value, truth)[0, 1] > 0.7


def test_fits_catalog_and_reconstructions(dropout_run, cube, tmp_path):
    """A .fits catalog carries TUNITs and header provenance; --reconstruct writes a matching cube."""
    out, recon = tmp_path / "cat.fits", tmp_path / "recon.fits"
    assert run(dropout_run, cube, "-o", out, "--samples", 4, "--reconstruct", recon) == 0
    cat = QTable.read(out)
    assert len(cat) == 64 and str(cat["flux"].unit) == "adu" and cat.meta["UNCERT"] == "mc_dropout"
    assert np.all(cat["flux_err"].value > 0)
    assert fits.getdata(recon).shape == (64, 32, 32)


def test_stamps_dataset_and_glob_inputs(dropout_run, tiny_dataset, tmp_path):
    """A directory of 2-D stamps, a glob and a dataset in one catalog, each row naming its source."""
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    images = tiny_dataset.load_images(np.arange(3))
    for i, image in enumerate(images):
        fits.writeto(stamps / f"g{i}.fits", image)
    out = tmp_path / "cat.parquet"
    assert run(dropout_run, stamps, str(stamps / "g1*.fits"), tiny_dataset.path, "-o", out) == 0
    cat = QTable.read(out)
    assert len(cat) == 3 + 1 + 64
    assert list(cat["source"][:4]) == [str(stamps / f"g{i}.fits") for i in (0, 1, 2, 1)]
    assert cat["flux"][0].value == pytest.approx(cat["flux"][4 + 0].value, rel=1e-5)


def test_nan_empty_and_resized_stamps_are_flagged(dropout_run, tiny_dataset, tmp_path, capsys):
    """NaN pixels and empty stamps are flagged rows; another size is refused, or adapted with a flag."""
    images = tiny_dataset.load_images(np.arange(3)).copy()
    images[0, 3, 4] = np.nan
    images[1] = 0.0
    cube = tmp_path / "odd.fits"
    fits.writeto(cube, images)
    out = tmp_path / "cat.parquet"
    assert run(dropout_run, cube, "-o", out) == 0
    cat = QTable.read(out)
    assert list(cat["flag_nan_pixels"]) == [True, False, False]
    assert list(cat["flag_empty"]) == [False, True, False] and np.isnan(cat["flux"][1])
    assert np.isfinite(cat["flux"][0])

    small = tmp_path / "small.fits"
    fits.writeto(small, images[:, 4:-4, 4:-4])
    assert run(dropout_run, small, "-o", tmp_path / "s.parquet") == 1
    err = capsys.readouterr().err
    assert "small.fits[0]" in err and "24x24" in err and "--adapt-size" in err
    assert run(dropout_run, small, "-o", tmp_path / "s.parquet", "--adapt-size") == 0
    assert QTable.read(tmp_path / "s.parquet")["flag_adapted"].all()


def _field(path, positions, size=160, scale=0.2, edge_pad=0):
    """A noisy field with Sérsic galaxies at ``positions`` (numpy pixel coords), a TAN WCS,
    a VARIANCE and a MASK HDU."""
    rng = np.random.default_rng(3)
    image = galsim.ImageF(size, size, scale=scale)
    psf = galsim.Gaussian(fwhm=0.7)
    for x, y in positions:
        gal = galsim.Convolve(galsim.Sersic(n=1.0, half_light_radius=0.6, flux=20000.0), psf)
        gal.drawImage(image, center=galsim.PositionD(x + 1, y + 1), add_to_image=True)
    sky = 100.0
    data = image.array + sky + rng.normal(0, np.sqrt(sky + 25.0), image.array.shape)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [size / 2, size / 2]
    wcs.wcs.cdelt = [-scale / 3600, scale / 3600]
    mask = np.zeros(data.shape, np.int16)
    mask[5, 5] = 1
    fits.HDUList([fits.PrimaryHDU(data.astype(np.float32), header=wcs.to_header()),
                  fits.ImageHDU(np.full(data.shape, sky + 25.0, np.float32), name="VARIANCE"),
                  fits.ImageHDU(mask, name="MASK")]).writeto(path)
    return wcs


def test_field_detections_carry_sky_and_pixel_positions(dropout_run, tmp_path):
    """Sources in a field are detected, cut out, located on the sky; one at the edge is truncated."""
    positions = [(40.2, 50.7), (110.0, 100.3), (80.5, 3.0)]
    wcs = _field(tmp_path / "field.fits", positions)
    out = tmp_path / "cat.parquet"
    assert run(dropout_run, tmp_path / "field.fits", "-o", out) == 0
    cat = QTable.read(out)
    assert len(cat) == 3 and str(cat["ra"].unit) == "deg"
    for x, y in positions:
        nearest = np.argmin(np.hypot(cat["x_field"].value - (x + 0.5), cat["y_field"].value - (y + 0.5)))
        row = cat[nearest]
        assert bool(row["flag_truncated"]) == (y < 16)
        if row["flag_truncated"]:  # half the light is off the field: the centroid is pulled inwards
            continue
        assert abs(row["x_field"].value - (x + 0.5)) < 0.5 and abs(row["y_field"].value - (y + 0.5)) < 0.5
        sky = wcs.pixel_to_world(x, y)
        assert abs(row["ra"].value - sky.ra.deg) * 3600 < 0.2 and abs(row["dec"].value - sky.dec.deg) * 3600 < 0.2


def test_bad_inputs_one_line_and_nothing_lost(dropout_run, cube, tmp_path, capsys):
    """Non-FITS files, fields without sources, corrupt models and existing outputs: exit 1, one line."""
    (tmp_path / "notes.fits").write_text("not a FITS file")
    cases = [([dropout_run, tmp_path / "notes.fits"], "notes.fits: not a readable FITS file"),
             ([dropout_run, tmp_path / "missing.fits"], "missing.fits"),
             ([dropout_run, cube, "--hdu", "SCI"], "no HDU 'SCI'"),
             ([dropout_run, cube, "--samples", "3", "-o", tmp_path / "x.txt"], ".parquet or .fits")]
    empty = np.random.default_rng(0).normal(0, 10, (100, 100)).astype(np.float32)
    fits.writeto(tmp_path / "blank.fits", empty)
    cases.append(([dropout_run, tmp_path / "blank.fits"], "no sources detected"))
    for argv, message in cases:
        if "-o" not in argv:
            argv = [*argv, "-o", tmp_path / "c.parquet"]
        assert run(*argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("galcae: error:") and message in err and "\n" not in err, err
        assert not list(tmp_path.glob("*.parts")), argv  # a refused input leaves no work directory

    out = tmp_path / "kept.parquet"
    assert run(dropout_run, cube, "-o", out) == 0
    before = out.read_bytes()
    assert run(dropout_run, cube, "-o", out) == 1 and "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_corrupt_model_and_no_dropout_are_refused(dropout_run, tiny_run, cube, tmp_path, capsys):
    """A weights file that no longer matches model.json, and MC dropout on a model without it."""
    assert run(tiny_run, cube, "--samples", 4, "-o", tmp_path / "c.parquet") == 1
    assert "dropout" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.json", "model.safetensors"):
        (broken / name).write_bytes((dropout_run / name).read_bytes())
    with open(broken / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    assert run(broken, cube, "-o", tmp_path / "c.parquet") == 1
    assert "SHA-256 differs" in capsys.readouterr().err


def test_resume_after_interruption_gives_the_same_catalog(dropout_run, cube, tmp_path, monkeypatch):
    """A crash in one chunk keeps the finished parts; re-running skips them; the result is identical."""
    reference = tmp_path / "ref.parquet"
    assert run(dropout_run, cube, "-o", reference, "--chunk-size", 16) == 0

    real = infer_module.infer_chunk
    calls = []

    def crash_on_third(*args):
        calls.append(args[4])
        if len(calls) == 3:
            raise RuntimeError("node lost")
        return real(*args)

    monkeypatch.setattr(infer_module, "infer_chunk", crash_on_third)
    out = tmp_path / "cat.parquet"
    assert run(dropout_run, cube, "-o", out, "--chunk-size", 16) == 1
    parts = sorted(p.name for p in (tmp_path / "cat.parquet.parts").glob("part-*.parquet"))
    assert parts == ["part-000000.parquet", "part-000001.parquet"] and not out.exists()

    monkeypatch.setattr(infer_module, "infer_chunk", real)
    summary = infer_module.infer_catalog(dropout_run, [cube], out, chunk_size=16)
    assert summary["skipped"] == 2
    assert QTable.read(out).as_array().tolist() == QTable.read(reference).as_array().tolist()
    assert not (tmp_path / "cat.parquet.parts").exists()


def test_dask_workers_give_the_in_process_catalog(dropout_run, cube, tmp_path):
    """Two local Dask worker processes (--workers 2), and an existing cluster (--scheduler),
    give the in-process catalog (floats to 1e-5)."""
    from distributed import LocalCluster

    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    assert run(dropout_run, cube, "-o", a, "--chunk-size", 16) == 0
    assert run(dropout_run, cube, "-o", b, "--chunk-size", 16, "--workers", 2) == 0
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster:
        assert run(dropout_run, cube, "-o", c, "--chunk-size", 16, "--scheduler",
                   cluster.scheduler_address) == 0
    ta = QTable.read(a)
    for other in (QTable.read(b), QTable.read(c)):
        assert ta.colnames == other.colnames and list(ta["id"]) == list(other["id"])
        for name in ("flux", "half_light_radius", "flux_err"):
            np.testing.assert_allclose(ta[name].value, other[name].value, rtol=1e-5)


def test_slurm_example_builds_single_threaded_jobs():
    """The README's Slurm recipe builds a job script (no Slurm needed to render it)."""
    pytest.importorskip("dask_jobqueue")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "slurm_infer.py"
    spec = importlib.util.spec_from_file_location("slurm_infer", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    cluster = example.slurm_cluster(4, queue="short", account="survey")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p short" in script and "OMP_NUM_THREADS=1" in script and "--nworkers 4" in script


def test_refinement_of_a_two_parameter_model_starts_the_rest_from_moments(tiny_run, tiny_dataset):
    """The paper's model predicts flux and r½ only: the fit starts the other five from HSM
    moments and updates the two columns the catalog has."""
    from galcae.checkpoint import load_model
    from galcae.estimate.cae import measure
    from galcae.estimate.refine import refine

    model = load_model(tiny_run, device="cpu")
    images = tiny_dataset.load_images()[:3]
    cae = measure(model, images)
    out = done = refine(model.card.training_set, images, {}, cae, min_snr=0)
    assert set(out) == set(cae) | {"snr", "refined", "refine_failed"} and done["refined"].all()
    flux = tiny_dataset.params["flux"][:3]
    assert np.all(np.abs(out["flux"] / flux - 1) < np.abs(cae["flux"] / flux - 1) + 0.02)
    assert np.all(out["flux_err"] < cae["flux_err"])
