"""``galcae infer``: a catalog of a trained CAE's measurements, with errors, flags and provenance."""

import contextlib
import io
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable

from galcae.catalog import infer as infer_module
from galcae.cli import main

from conftest import SEVEN


def run(*argv) -> int:
    return main(["infer", *map(str, argv)])


def run_quietly(*argv) -> tuple[int, str]:
    """``galcae infer ARGV``'s exit code and standard output."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = run(*argv)
    return code, out.getvalue()


# --- a cube of stamps -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cube_catalog(dropout_run, cube, tmp_path_factory):
    """The dropout model's Parquet catalog of the tiny cube."""
    out = tmp_path_factory.mktemp("infer") / "cat.parquet"
    assert run(dropout_run, cube, "-o", out) == 0
    return QTable.read(out)


def test_cube_catalog_has_one_row_per_stamp_in_order(cube_catalog):
    """One row per stamp, ids and cube indices in the cube's order."""
    cat = cube_catalog
    assert len(cat) == 64 and list(cat["id"]) == list(range(64)) and list(cat["index"]) == list(range(64))


def test_cube_catalog_rows_name_their_source(cube_catalog, cube):
    """Each row names the file it was measured in."""
    assert set(cube_catalog["source"]) == {str(cube)}


def test_cube_catalog_columns_carry_units(cube_catalog):
    """Values and errors carry their physical units."""
    assert str(cube_catalog["flux"].unit) == "adu" and str(cube_catalog["half_light_radius_err"].unit) == "arcsec"


def test_cube_catalog_errors_are_positive(cube_catalog):
    """Every row has a positive flux error."""
    assert np.all(cube_catalog["flux_err"].value > 0)


def test_clean_stamps_raise_no_flag(cube_catalog):
    """The simulated stamps raise none of the catalog's flags."""
    assert not any(cube_catalog[f].any() for f in infer_module.FLAGS)


def test_catalog_records_its_provenance(cube_catalog, dropout_run, cube):
    """The catalog's metadata names the model's weights, the error method and the inputs."""
    meta = cube_catalog.meta
    assert meta["model_sha256"] == json.loads((dropout_run / "model.json").read_text())["weights_sha256"]
    assert meta["uncertainty"] == "heldout" and meta["inputs"] == [str(cube)]


def test_cube_catalog_flux_tracks_the_truth(cube_catalog, tiny_dataset):
    """The predicted flux correlates with the true flux."""
    assert np.corrcoef(cube_catalog["flux"].value, tiny_dataset.params["flux"])[0, 1] > 0.7


@pytest.fixture(scope="module")
def fits_catalog(dropout_run, cube, tmp_path_factory):
    """A .fits catalog of the cube with 4 MC-dropout samples, and its --reconstruct cube."""
    tmp = tmp_path_factory.mktemp("infer")
    out, recon = tmp / "cat.fits", tmp / "recon.fits"
    assert run(dropout_run, cube, "-o", out, "--samples", 4, "--reconstruct", recon) == 0
    return QTable.read(out), recon


def test_fits_catalog_carries_units_and_header_provenance(fits_catalog):
    """A .fits catalog carries TUNITs and the error method in its header."""
    cat, _ = fits_catalog
    assert len(cat) == 64 and str(cat["flux"].unit) == "adu" and cat.meta["UNCERT"] == "mc_dropout"


def test_mc_dropout_errors_are_positive(fits_catalog):
    """MC-dropout samples give every row a positive flux error."""
    cat, _ = fits_catalog
    assert np.all(cat["flux_err"].value > 0)


def test_reconstructions_match_the_catalog(fits_catalog):
    """--reconstruct writes one decoded stamp per catalog row."""
    _, recon = fits_catalog
    assert fits.getdata(recon).shape == (64, 32, 32)


# --- a model conditioned on the seeing and noise -------------------------------------------------


@pytest.fixture(scope="module")
def conditioned_catalog(survey_run, survey_dataset, tmp_path_factory):
    """The seven-parameter conditioned model's catalog of its dataset (whose truth gives the PSF)."""
    out = tmp_path_factory.mktemp("infer") / "ds.parquet"
    assert main(["infer", "--model", str(survey_run), str(survey_dataset.path), "-o", str(out)]) == 0
    return QTable.read(out)


def test_conditioned_catalog_has_all_seven_parameters_and_the_shape(conditioned_catalog):
    """All seven parameters, |g| and the position angle, finite, with positive errors."""
    t = conditioned_catalog
    for name in (*SEVEN, "ellipticity", "position_angle"):
        assert np.all(np.isfinite(t[name])) and np.all(t[f"{name}_err"].value > 0), name


def test_conditioned_catalog_95_intervals_hold_the_value(conditioned_catalog):
    """The 95% interval holds the value and reaches beyond +1 sigma."""
    # (On a log axis the lower end may stay within -1 first-order sigma.)
    t = conditioned_catalog
    for name in SEVEN:
        assert np.all(t[f"{name}_lo95"] < t[name]) and np.all(t[f"{name}_hi95"] > t[name] + t[f"{name}_err"]), name


def test_conditioned_catalog_states_the_conditions_used(conditioned_catalog, survey_dataset):
    """The PSF used is the dataset's truth."""
    assert np.allclose(conditioned_catalog["psf_fwhm"].value, survey_dataset.params["psf_fwhm"])


def test_conditioned_catalog_measures_the_noise_within_the_training_range(conditioned_catalog):
    """The measured noise is stated in ADU; no stamp of the training set's kind is flagged."""
    t = conditioned_catalog
    assert str(t["noise_sigma"].unit) == "adu" and not t["flag_conditions_out_of_range"].any()


@pytest.fixture(scope="module")
def keywordless_cube(survey_dataset, tmp_path_factory):
    """Eight survey stamps in a cube without PSF keywords."""
    path = tmp_path_factory.mktemp("infer") / "cube.fits"
    fits.PrimaryHDU(survey_dataset.load_images()[:8]).writeto(path)
    return path


def test_stamps_of_unknown_seeing_are_flagged_not_measured(survey_run, keywordless_cube, tmp_path):
    """A conditioned model leaves stamps whose seeing is unknown NaN, and flags them."""
    assert main(["infer", str(survey_run), str(keywordless_cube), "-o", str(tmp_path / "unknown.parquet")]) == 0
    unknown = QTable.read(tmp_path / "unknown.parquet")
    assert np.all(np.isnan(unknown["flux"])) and unknown["flag_conditions_out_of_range"].all()


def test_seeing_outside_the_training_range_is_measured_and_flagged(survey_run, keywordless_cube, tmp_path):
    """A stated seeing outside the training range (--psf-fwhm 2.0) is measured, and flagged."""
    assert main(["infer", str(survey_run), str(keywordless_cube), "--psf-fwhm", "2.0", "--psf-beta", "3",
                 "-o", str(tmp_path / "wide.parquet")]) == 0
    wide = QTable.read(tmp_path / "wide.parquet")
    assert np.all(np.isfinite(wide["flux"])) and wide["flag_conditions_out_of_range"].all()


# --- refinement by the classical fit ------------------------------------------------------------


@pytest.fixture(scope="module")
def refined(survey_run, survey_dataset, tmp_path_factory):
    """Six survey stamps measured by the conditioned model alone and refined above S/N 20."""
    tmp = tmp_path_factory.mktemp("refine")
    cube = tmp / "cube.fits"
    fits.PrimaryHDU(survey_dataset.load_images()[:6]).writeto(cube)
    common = ["infer", str(survey_run), str(cube), "--psf-fwhm", "0.8", "--psf-beta", "3"]
    assert main([*common, "-o", str(tmp / "cae.fits")]) == 0
    code, stdout = run_quietly(*common[1:], "--refine-snr", "20", "-o", tmp / "refined.fits")
    assert code == 0
    cae, refined = QTable.read(tmp / "cae.fits"), QTable.read(tmp / "refined.fits")
    return SimpleNamespace(tmp=tmp, common=common, stdout=stdout, cae=cae, refined=refined,
                           rows=np.asarray(refined["refined"]))


def test_refining_reports_how_many_rows_were_refined(refined):
    """The command's summary line counts the refined rows."""
    assert "refined:" in refined.stdout


def test_refined_catalog_adds_the_measured_snr(refined):
    """Only a refined catalog has the stamps' S/N, finite for every row."""
    assert "snr" not in refined.cae.colnames and np.all(np.isfinite(refined.refined["snr"]))


def test_refined_rows_are_the_bright_stamps_whose_fit_succeeded(refined):
    """'refined' marks exactly the stamps at S/N >= 20 whose fit did not fail, and some are."""
    cat = refined.refined
    assert np.array_equal(refined.rows, (cat["snr"] >= 20) & ~cat["flag_refine_failed"]) and refined.rows.any()


def test_refined_rows_replace_the_caes_values(refined):
    """The refined rows' values are the fit's, the others the CAE's."""
    rows, cat, cae = refined.rows, refined.refined, refined.cae
    assert np.all(cat["flux"][rows] != cae["flux"][rows])
    assert np.all(cat["flux"][~rows] == cae["flux"][~rows])


def test_refined_rows_have_gaussian_95_intervals(refined):
    """Without a recalibration the fit's 95% interval is ±1.96 of its error."""
    rows, cat = refined.rows, refined.refined
    assert np.allclose(cat["flux_hi95"][rows] - cat["flux"][rows], 1.96 * cat["flux_err"][rows], rtol=1e-4)


def test_refined_catalog_states_the_refinement_in_its_header(refined):
    """The header's error method says where the classical fit replaced the CAE."""
    assert "classical fit where snr >= 20" in refined.refined.meta["UNCERT"]


def test_negative_refine_snr_is_a_usage_error(refined):
    """--refine-snr below 0 is refused by the command line (exit 2)."""
    assert main([*refined.common, "--refine-snr", "-1", "-o", str(refined.tmp / "bad.fits")]) == 2


@pytest.fixture(scope="module")
def calibrated(refined, survey_run):
    """A copy of the run shipped with its refined errors calibrated above S/N 20 (a calibration
    of factor 1), and the command line measuring the six stamps with it."""
    path = refined.tmp / "calibrated"
    shutil.copytree(survey_run, path, ignore=shutil.ignore_patterns("eval", "*.pt"))
    meta = json.loads((path / "model.json").read_text())
    meta["refine_calibration"] = {"edges": [[0.0, 0.0]] * 7, "scale": [[1.0]] * 7}
    meta["refine_calibration_set"] = {"min_snr": 20}
    (path / "model.json").write_text(json.dumps(meta))
    common = list(refined.common)
    common[1] = str(path)
    return common


def test_a_model_with_a_refine_calibration_refines_by_default(refined, calibrated):
    """A model whose refined errors were calibrated above S/N 20 refines above 20 by default."""
    assert main([*calibrated, "-o", str(refined.tmp / "default.fits")]) == 0
    default = QTable.read(refined.tmp / "default.fits")
    assert np.array_equal(default["refined"], refined.rows)
    assert np.array_equal(default["flux"], refined.refined["flux"])


def test_no_refine_gives_the_cae_alone(refined, calibrated):
    """--no-refine measures with the CAE alone, even for a model that refines by default."""
    assert main([*calibrated, "--no-refine", "-o", str(refined.tmp / "alone.fits")]) == 0
    alone = QTable.read(refined.tmp / "alone.fits")
    assert "refined" not in alone.colnames and np.array_equal(alone["flux"], refined.cae["flux"])


def test_no_refine_with_refine_snr_is_a_usage_error(refined, calibrated):
    """--no-refine and --refine-snr together are refused by the command line (exit 2)."""
    assert main([*calibrated, "--no-refine", "--refine-snr", "20", "-o", str(refined.tmp / "both.fits")]) == 2


# --- the model card's defaults, the same from the CLI and from Python ------------------------


@pytest.fixture(scope="module")
def bright_survey_cube(tmp_path_factory):
    """Six bright survey-like stamps under one stated PSF (PSFFWHM / PSFBETA keywords)."""
    from galcae.config import load_stage
    from galcae.simulate import draw_parameters, render_chunk

    cfg = load_stage("simulate", "survey", ["n_galaxies=6", "seed=11", "ranges.flux=[30000, 200000]",
                                            "psf.fwhm=0.8", "psf.beta=3.0"])
    header = fits.Header({"PSFFWHM": 0.8, "PSFBETA": 3.0})
    path = tmp_path_factory.mktemp("bright") / "bright.fits"
    fits.PrimaryHDU(render_chunk(cfg, draw_parameters(cfg))["images"], header=header).writeto(path)
    return path


def test_python_api_refines_as_the_model_card_says(bright_survey_cube, tmp_path):
    """infer_catalog("survey", ...) refines the bright stamps by default, as `galcae infer` does."""
    summary = infer_module.infer_catalog("survey", [bright_survey_cube], tmp_path / "api.parquet")
    assert summary["true_counts"]["refined"] == 6
    assert "classical fit where snr >= 25" in summary["uncertainty"]


def test_cli_and_python_api_write_the_same_catalog(bright_survey_cube, tmp_path):
    """The same inputs and model give the same bytes from the command line and from Python."""
    infer_module.infer_catalog("survey", [bright_survey_cube], tmp_path / "api.parquet")
    assert run("--model", "survey", bright_survey_cube, "-o", tmp_path / "cli.parquet") == 0
    assert (tmp_path / "api.parquet").read_bytes() == (tmp_path / "cli.parquet").read_bytes()


def test_the_model_is_loaded_once_per_process(tiny_run, cube, tmp_path, monkeypatch):
    """In-process, the catalog's chunks reuse the model infer_catalog loaded."""
    loads = []
    real = infer_module.load_model
    monkeypatch.setattr(infer_module, "_MODELS", {})
    monkeypatch.setattr(infer_module, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    infer_module.infer_catalog(tiny_run, [cube], tmp_path / "c.parquet", chunk_size=8)
    assert len(loads) == 1
