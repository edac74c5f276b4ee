"""Beyond the paper: seven parameters, observing conditions, calibrated errors, a shipped model."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.table import QTable

from galcae.checkpoint import load_model
from galcae.cli import main
from galcae.config import load_stage
from galcae.physics import render
from galcae.model import CAE, Architecture
from galcae.simulate import draw_parameters
from galcae.train import dihedral, dihedral_params
from galcae.uncertainty import VarianceCalibration, coverage

from conftest import SEVEN

def test_coverage_of_gaussian_predictions_with_known_variance():
    """Truths drawn around the predictions with the stated sigma fall in the central 68% / 95%
    intervals 68% / 95% of the time; sigmas twice too large over-cover and are scaled by 1/2."""
    rng = np.random.default_rng(0)
    z_pred = rng.normal(size=(200_000, 2))
    sigma = np.exp(rng.normal(size=(200_000, 2)))  # heteroscedastic
    z_true = z_pred + sigma * rng.normal(size=sigma.shape)
    cov = coverage(z_true, z_pred, sigma)
    assert np.allclose(cov[0.68], 0.68, atol=0.005) and np.allclose(cov[0.95], 0.95, atol=0.005)
    assert np.allclose(coverage(z_true, z_pred, 2 * sigma)[0.68], 0.953, atol=0.005)  # too wide
    one_bin = VarianceCalibration.fit(z_true, z_pred, 2 * sigma, per_bin=len(z_true))
    assert np.allclose(one_bin.scale, 0.5, atol=0.01)


def test_recalibration_in_bins_of_sigma_fixes_a_head_wrong_only_at_large_sigma():
    """A head right for small sigmas and 2x too confident for large ones: one scale per
    parameter cannot fix both halves, the binned recalibration does."""
    rng = np.random.default_rng(1)
    z_pred = rng.normal(size=(40_000, 1))
    sigma = np.exp(rng.uniform(-3, 1, size=(40_000, 1)))
    truth_sigma = np.where(sigma > np.exp(-1), 2 * sigma, sigma)
    z_true = z_pred + truth_sigma * rng.normal(size=sigma.shape)
    calibration = VarianceCalibration.fit(z_true[:20_000], z_pred[:20_000], sigma[:20_000])
    fresh = slice(20_000, None)
    big = sigma[fresh, 0] > np.exp(-1)
    one_scale = VarianceCalibration.fit(z_true[:20_000], z_pred[:20_000], sigma[:20_000],
                                        per_bin=20_000).apply(sigma[fresh])
    binned = calibration.apply(sigma[fresh])
    for half in (big, ~big):
        assert abs(coverage(z_true[fresh][half], z_pred[fresh][half], binned[half])[0.68][0] - 0.683) < 0.02
    assert abs(coverage(z_true[fresh][~big], z_pred[fresh][~big], one_scale[~big])[0.68][0] - 0.683) > 0.1
    # A model saved with one scale per parameter reads as a single bin.
    single = VarianceCalibration.from_meta({"variance_scale": [2.0]}, 1)
    assert np.allclose(single.apply(sigma[:5]), 2 * sigma[:5])


def test_snr_stage_fixes_a_head_wrong_by_snr_at_every_sigma():
    """A head 1.5x too confident on faint stamps and 0.7x too cautious on bright ones, whatever
    its sigma: bins of sigma cannot tell them apart, the S/N stage can; it survives model.json."""
    rng = np.random.default_rng(2)
    n = 40_000
    z_pred, sigma = rng.normal(size=(n, 2)), np.exp(rng.uniform(-2, 0, size=(n, 2)))
    snr = np.exp(rng.uniform(0, 6, size=n))
    z_true = z_pred + np.where(snr < 20, 1.5, 0.7)[:, None] * sigma * rng.normal(size=sigma.shape)
    fitted = VarianceCalibration.fit(z_true[:20_000], z_pred[:20_000], sigma[:20_000], snr[:20_000])
    calibration = VarianceCalibration.from_meta({"variance_calibration": fitted.to_dict()}, 2)
    assert calibration == fitted and calibration.needs_snr
    with pytest.raises(ValueError, match="S/N"):
        calibration.apply(sigma)
    fresh = slice(20_000, None)
    sigma_only = VarianceCalibration.fit(z_true[:20_000], z_pred[:20_000], sigma[:20_000]).apply(sigma[fresh])
    both = calibration.apply(sigma[fresh], snr[fresh])
    for half in (snr[fresh] < 20, snr[fresh] >= 20):
        assert np.all(np.abs(coverage(z_true[fresh][half], z_pred[fresh][half], both[half])[0.68] - 0.683) < 0.03)
        assert np.all(np.abs(coverage(z_true[fresh][half], z_pred[fresh][half], sigma_only[half])[0.68]
                             - 0.683) > 0.08)


def test_tail_stage_places_the_95_interval_of_non_gaussian_pulls():
    """Light-tailed (uniform) pulls where sigma is large (an estimate bounded by its prior),
    heavy-tailed (Laplace) ones where it is small: once 68% lie within 1 sigma, the Gaussian
    95% interval misses both ways by about 5 points; the tail factors put 95% inside it in
    each, and survive model.json."""
    rng = np.random.default_rng(3)
    n = 40_000
    bounded = rng.uniform(size=n) < 0.5
    z_pred = rng.normal(size=(n, 1))
    sigma = np.exp(np.where(bounded, rng.uniform(-0.5, 0, size=n), rng.uniform(-3, -2, size=n)))[:, None]
    snr = np.exp(rng.uniform(0, 6, size=n))
    shape = np.where(bounded[:, None], rng.uniform(-1, 1, size=(n, 1)), rng.laplace(size=(n, 1)))
    z_true = z_pred + sigma * shape
    fitted = VarianceCalibration.fit(z_true[:20_000], z_pred[:20_000], sigma[:20_000], snr[:20_000])
    assert VarianceCalibration.from_meta({"variance_calibration": fitted.to_dict()}, 1) == fitted
    fresh = slice(20_000, None)
    calibrated = fitted.apply(sigma[fresh], snr[fresh])
    tail = fitted.tail(calibrated)
    for half, wrong_way in ((~bounded[fresh], -1), (bounded[fresh], 1)):
        args = z_true[fresh][half], z_pred[fresh][half], calibrated[half]
        gaussian, tailed = coverage(*args), coverage(*args, tail[half])
        assert abs(tailed[0.68][0] - 0.683) < 0.02 and abs(tailed[0.95][0] - 0.95) < 0.01
        assert 0.03 < wrong_way * (gaussian[0.95][0] - 0.95) < 0.08
    # Models calibrated before the tail stage keep Gaussian intervals.
    assert np.all(VarianceCalibration.from_meta({"variance_scale": [2.0]}, 1).tail(np.ones((3, 1))) == 1)


def test_conditions_enter_encoder_heads_and_decoder():
    torch.manual_seed(0)
    net = CAE(Architecture(stamp_size=32, latent_dim=16, n_supervised=7, n_conditions=3,
                           predict_variance=True)).eval()
    z = torch.randn(2, 16)
    good, bad_seeing = torch.zeros(2, 3), torch.tensor([[2.0, 0, 0], [2.0, 0, 0]])
    assert not torch.allclose(net.decode(z, good), net.decode(z, bad_seeing))
    x = torch.rand(2, 1, 32, 32)
    (z1, v1), (z2, v2) = net.heads(net.encoder(x), good), net.heads(net.encoder(x), bad_seeing)
    assert not torch.allclose(z1, z2) and not torch.allclose(v1, v2) and v1.shape == (2, 7)
    with pytest.raises(ValueError, match="conditioned on 3"):
        net.decode(z)


def test_flipped_and_rotated_images_keep_matching_their_transformed_truth():
    """Augmentation transforms x, y, g1, g2 exactly as the pixels move."""
    cfg = load_stage("simulate", "paper", [])
    theta = {"flux": 1e4, "half_light_radius": 0.8, "sersic_n": 1.5, "g1": 0.3, "g2": 0.15,
             "x": 29.3, "y": 34.1}
    image = render(cfg, theta)
    for k in range(8):
        moved = dihedral(torch.as_tensor(image)[None, None], k)[0, 0].numpy()
        truth = dihedral_params({n: np.array([v]) for n, v in theta.items()}, k, 64)
        expected = render(cfg, {n: float(v[0]) for n, v in truth.items()})
        assert np.abs(moved - expected).max() < 1e-5 * image.max(), k


def test_survey_preset_draws_cutouts_and_conditions_per_galaxy():
    cfg = load_stage("simulate", "survey", ["n_galaxies=2000"])
    t = draw_parameters(cfg)
    assert np.all(np.abs(t["x"] - 32) <= 2) and np.all(np.abs(t["y"] - 32) <= 2)
    assert 0.5 <= t["psf_fwhm"].min() < 0.55 and 1.15 < t["psf_fwhm"].max() <= 1.2
    # log-uniform: as many galaxies in each decade of flux
    decades = np.histogram(np.log10(t["flux"]), bins=[np.log10(300), np.log10(3000),
                                                      np.log10(30000), np.log10(300000)])[0]
    assert decades.min() > 0.28 * len(t["flux"])
    assert np.median(t["sky_level"]) == pytest.approx(np.sqrt(100 * 2000), rel=0.15)
    # the paper's preset still draws exactly its old galaxies, under one fixed PSF and sky
    paper = draw_parameters(load_stage("simulate", "paper", ["n_galaxies=5"]))
    assert np.all(paper["psf_fwhm"] == 0.7) and np.all(paper["sky_level"] == 100.0)


def test_conditioned_seven_parameter_model_catalog(survey_run, survey_dataset, tmp_path):
    """All seven parameters with errors, |g| and PA derived, the conditions used, and flags for
    stamps whose seeing is unknown or outside the training range."""
    assert main(["infer", "--model", str(survey_run), str(survey_dataset.path),
                 "-o", str(tmp_path / "ds.parquet")]) == 0
    t = QTable.read(tmp_path / "ds.parquet")
    for name in (*SEVEN, "ellipticity", "position_angle"):
        assert np.all(np.isfinite(t[name])) and np.all(t[f"{name}_err"].value > 0), name
    for name in SEVEN:  # the 95% interval holds the value and reaches beyond +1 sigma (on a
        # log axis the lower end may stay within -1 first-order sigma)
        assert np.all(t[f"{name}_lo95"] < t[name]) and np.all(t[f"{name}_hi95"] > t[name] + t[f"{name}_err"]), name
    assert np.allclose(t["psf_fwhm"].value, survey_dataset.params["psf_fwhm"])
    assert str(t["noise_sigma"].unit) == "adu" and not t["flag_conditions_out_of_range"].any()

    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(survey_dataset.load_images()[:8]).writeto(cube)
    assert main(["infer", str(survey_run), str(cube), "-o", str(tmp_path / "unknown.parquet")]) == 0
    unknown = QTable.read(tmp_path / "unknown.parquet")
    assert np.all(np.isnan(unknown["flux"])) and unknown["flag_conditions_out_of_range"].all()
    assert main(["infer", str(survey_run), str(cube), "--psf-fwhm", "2.0", "--psf-beta", "3",
                 "-o", str(tmp_path / "wide.parquet")]) == 0
    wide = QTable.read(tmp_path / "wide.parquet")
    assert np.all(np.isfinite(wide["flux"])) and wide["flag_conditions_out_of_range"].all()


def test_refined_catalog_marks_the_rows_the_fit_replaced(survey_run, survey_dataset, tmp_path, capsys):
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(survey_dataset.load_images()[:6]).writeto(cube)
    common = ["infer", str(survey_run), str(cube), "--psf-fwhm", "0.8", "--psf-beta", "3"]
    assert main([*common, "-o", str(tmp_path / "cae.fits")]) == 0
    assert main([*common, "--refine-snr", "20", "-o", str(tmp_path / "refined.fits")]) == 0
    assert "refined:" in capsys.readouterr().out
    cae, refined = QTable.read(tmp_path / "cae.fits"), QTable.read(tmp_path / "refined.fits")
    assert "snr" not in cae.colnames and np.all(np.isfinite(refined["snr"]))
    rows = np.asarray(refined["refined"])
    assert np.array_equal(rows, (refined["snr"] >= 20) & ~refined["flag_refine_failed"]) and rows.any()
    assert np.all(refined["flux"][rows] != cae["flux"][rows])
    assert np.all(refined["flux"][~rows] == cae["flux"][~rows])
    assert np.allclose(refined["flux_hi95"][rows] - refined["flux"][rows], 1.96 * refined["flux_err"][rows], rtol=1e-4)
    assert "classical fit where snr >= 20" in refined.meta["UNCERT"]
    assert main([*common, "--refine-snr", "-1", "-o", str(tmp_path / "bad.fits")]) == 2

    # A model shipped with its refined errors calibrated above S/N 20 refines above 20 by
    # default (here a calibration of factor 1), and --no-refine gives the CAE alone.
    calibrated = tmp_path / "calibrated"
    shutil.copytree(survey_run, calibrated, ignore=shutil.ignore_patterns("eval", "*.pt"))
    meta = json.loads((calibrated / "model.json").read_text())
    meta["refine_calibration"] = {"edges": [[0.0, 0.0]] * 7, "scale": [[1.0]] * 7}
    meta["refine_calibration_set"] = {"min_snr": 20}
    (calibrated / "model.json").write_text(json.dumps(meta))
    common[1] = str(calibrated)
    assert main([*common, "-o", str(tmp_path / "default.fits")]) == 0
    default = QTable.read(tmp_path / "default.fits")
    assert np.array_equal(default["refined"], rows) and np.array_equal(default["flux"], refined["flux"])
    assert main([*common, "--no-refine", "-o", str(tmp_path / "alone.fits")]) == 0
    alone = QTable.read(tmp_path / "alone.fits")
    assert "refined" not in alone.colnames and np.array_equal(alone["flux"], cae["flux"])
    assert main([*common, "--no-refine", "--refine-snr", "20", "-o", str(tmp_path / "both.fits")]) == 2


def test_evaluate_scores_the_refined_cae_beside_the_cae(survey_run, survey_dataset, capsys):
    assert main(["evaluate", str(survey_run), str(survey_dataset.path), "--classical", "0",
                 "--bound", "6", "--refine-snr", "0", "--no-remeasure"]) == 0
    saved = json.loads((survey_run / "eval" / "metrics.json").read_text())
    assert set(saved["comparison"]) == {"cae", "cae+fit"}
    assert saved["refinement"]["n"] == 6 and saved["refinement"]["refined"] + saved["refinement"]["failed"] == 6
    assert saved["comparison"]["cae+fit"]["flux"]["all"]["n"] == 6
    assert "cae+fit: the CAE refined" in capsys.readouterr().out
    assert "cae+fit: the CAE refined" in (survey_run / "eval" / "report.html").read_text()


def test_fit_errors_are_recalibrated_on_refined_simulations(survey_run, survey_dataset):
    """What tools/ship_model.py --refine-calibration fits: the fit's errors, per bin of error and
    of S/N, with 95% tails, on the refined stamps only; it survives model.json."""
    from galcae.estimate.cae import measure
    from galcae.estimate.refine import calibrate_fit_errors
    from galcae.train import conditioning_inputs

    model = load_model(survey_run, device="cpu")
    ids = np.arange(8)
    images = survey_dataset.load_images(ids)
    conditions = conditioning_inputs(survey_dataset, images, model.conditions, ids)
    fitted, refined = calibrate_fit_errors(model.card.training_set, images, conditions,
                                           measure(model, images, conditions),
                                           {n: survey_dataset.params[n][ids] for n in SEVEN}, 0.0, per_bin=4)
    assert 6 <= refined <= 8 and fitted.needs_snr and len(fitted.tail_scale) == 7
    assert VarianceCalibration.from_dict(fitted.to_dict()) == fitted
    assert model.card.refinement.calibration is None and model.card.refinement.min_snr is None
    assert np.all(np.isfinite(fitted.tail_scale)) and np.all(np.asarray(fitted.scale) > 0)


def test_unknown_model_name_is_one_line(tmp_path, capsys):
    assert main(["infer", "--model", "no-such-model", "x.fits", "-o", str(tmp_path / "c.parquet")]) == 1
    assert "neither a path nor a shipped model" in capsys.readouterr().err


def test_a_directory_named_like_a_shipped_model_does_not_hide_it(tmp_path, monkeypatch):
    """The README's layout (survey/dataset, survey/run) leaves a ./survey directory."""
    from galcae.card import resolve_model

    (tmp_path / "survey" / "dataset").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("survey") != Path("survey")
    assert load_model("survey", device="cpu").supervised[0] == "flux"


def test_shipped_survey_model_recovers_flux_and_radius_within_its_errors():
    """The model in the package: load by name, measure fresh simulated galaxies, and find the
    truth within 3 of its own sigmas for most of them."""
    from galcae.checkpoint import load_model
    from galcae.estimate.cae import measure
    from galcae.simulate import render_chunk

    model = load_model("survey", device="cpu")
    cfg = load_stage("simulate", "survey", ["n_galaxies=12", "seed=99", "ranges.flux=[5000, 50000]",
                                            "ranges.half_light_radius=[0.4, 1.5]"])
    truth = draw_parameters(cfg)
    images = render_chunk(cfg, truth)["images"]
    out = measure(model, images, {"psf_fwhm": truth["psf_fwhm"], "psf_beta": truth["psf_beta"]})
    for name in ("flux", "half_light_radius"):
        pulls = np.abs(out[name] - truth[name]) / out[f"{name}_err"]
        assert np.sum(pulls < 3) >= 10, (name, pulls)


def test_refinement_sky_level_reproduces_the_measured_noise():
    from galcae.estimate.refine import stamp_config
    from galcae.physics import sky_sigma

    sim = load_stage("simulate", "survey", [])
    noise = sky_sigma(np.array([150.0, 1800.0]), sim.noise.gain, sim.noise.read_noise)
    cfg = stamp_config(sim, {"psf_fwhm": [0.7, 1.1], "psf_beta": [3.0, 4.0], "noise_sigma": noise}, 1)
    assert cfg.noise.sky_level == pytest.approx(1800.0) and cfg.psf.fwhm == 1.1 and cfg.psf.beta == 4.0


def test_stamp_snr_estimates_the_matched_filter_snr():
    from galcae.conditions import stamp_noise_sigma
    from galcae.physics import stamp_snr
    from galcae.simulate import render_chunk

    cfg = load_stage("simulate", "survey", ["n_galaxies=24", "seed=97", "ranges.flux=[3000, 300000]"])
    rendered = render_chunk(cfg, draw_parameters(cfg))
    images, snr = rendered["images"], rendered["snr"]
    estimate = stamp_snr(images, stamp_noise_sigma(images), cfg.noise.gain)
    bright = snr > 30
    assert bright.sum() > 10 and np.all(np.abs(estimate[bright] / snr[bright] - 1) < 0.25)
    assert np.median(np.abs(estimate[bright] / snr[bright] - 1)) < 0.05


def test_refinement_fits_bright_stamps_from_the_cae_values_and_leaves_faint_ones():
    """Bright galaxies get the classical fit's values and its (smaller) errors, which cover the
    truth; a galaxy below the threshold keeps the CAE's row; a recalibration of the fit's
    errors rescales the refined rows'."""
    from galcae.estimate.cae import measure
    from galcae.estimate.refine import refine
    from galcae.simulate import render_chunk

    model = load_model("survey", device="cpu")
    cfg = load_stage("simulate", "survey", ["n_galaxies=5", "seed=98", "ranges.flux=[40000, 200000]",
                                            "ranges.half_light_radius=[0.4, 1.0]", "ranges.sersic_n=[0.8, 3]"])
    truth = draw_parameters(cfg)
    truth["flux"][0] = 400.0  # far below S/N 30
    images = render_chunk(cfg, truth)["images"]
    conditions = {"psf_fwhm": truth["psf_fwhm"], "psf_beta": truth["psf_beta"]}
    cae = measure(model, images, conditions)
    before = {k: v.copy() for k, v in cae.items()}
    from galcae.conditions import stamp_noise_sigma

    out = done = refine(model.card.training_set, images,
                        {**conditions, "noise_sigma": stamp_noise_sigma(images)}, cae, min_snr=30)
    assert all(np.array_equal(cae[k], before[k], equal_nan=True) for k in before)  # not mutated
    assert done["snr"][0] < 30 and not done["refined"][0] and out["flux"][0] == cae["flux"][0]
    bright = slice(1, None)
    assert done["refined"][bright].all() and not done["refine_failed"].any()
    assert np.all(done["snr"][bright] > 100)
    for name in SEVEN:
        assert np.all(out[f"{name}_err"][bright] < cae[f"{name}_err"][bright]), name
        pulls = np.abs(out[name][bright] - truth[name][bright]) / out[f"{name}_err"][bright]
        assert np.all(pulls < 4), (name, pulls)
    assert not np.array_equal(out["ellipticity"][bright], cae["ellipticity"][bright])

    # A recalibration of the fit's errors (here: twice as large, 95% intervals 1.5x wider
    # than Gaussian) applies to the refined rows only.
    doubled = VarianceCalibration(edges=((0.0, 0.0),) * 7, scale=((2.0,),) * 7, snr_edges=((-9.0, 99.0),) * 7,
                                  snr_scale=((1.0,),) * 7, tail_edges=((-99.0, 99.0),) * 7,
                                  tail_scale=((1.5,),) * 7)
    again = refine(model.card.training_set, images, {**conditions, "noise_sigma": stamp_noise_sigma(images)},
                   cae, min_snr=30, calibration=doubled)
    assert again["flux_err"][0] == cae["flux_err"][0]
    for name in SEVEN:
        assert np.allclose(again[f"{name}_err"][bright], 2 * out[f"{name}_err"][bright]), name
        assert np.allclose(again[f"{name}_hi95"][bright] - again[name][bright],
                           2 * 1.5 * (out[f"{name}_hi95"][bright] - out[name][bright])), name
