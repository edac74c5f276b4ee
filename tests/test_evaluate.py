import json

import numpy as np
import pytest

from galcae.evaluate import evaluate_run
from galcae.evaluate.evaluation import half_light_radius_of
from galcae.evaluate.metrics import binned_error_summary, error_summary, r2
from galcae.evaluate.pca import pca_baseline
from galcae.physics import render_noiseless
from galcae.simulate import simulate_dataset

from conftest import tiny_sim


def test_r2_on_known_inputs():
    """R² is 1 for a perfect prediction, 0 for predicting the mean, negative when worse."""
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert r2(y, y) == 1.0
    assert r2(y, np.full(4, y.mean())) == 0.0
    assert r2(y, y[::-1]) < 0


def test_log10_r2_survives_nonpositive_predictions():
    """A negative flux prediction (possible with a linear latent) scores badly, not NaN."""
    from galcae.evaluate.metrics import r2_log10

    true = np.array([100.0, 1000.0, 10000.0])
    assert r2_log10(true, true) == pytest.approx(1.0)
    worse = r2_log10(true, np.array([-5.0, 1000.0, 10000.0]))
    assert np.isfinite(worse) and worse < 1.0


def test_error_summary_on_known_inputs():
    """Bias is the median relative error and scatter its mad_std; bins split by S/N."""
    true = np.full(5, 100.0)
    pred = np.array([90.0, 100.0, 110.0, 100.0, 120.0])
    summary = error_summary(true, pred)
    assert summary["n"] == 5 and summary["bias"] == pytest.approx(0.0)
    assert summary["scatter"] == pytest.approx(1.4826 * 0.1, rel=1e-3)
    bins = binned_error_summary(true, pred, snr=[5, 5, 50, 50, 500])
    assert [b["n"] for b in bins] == [2, 0, 2, 1]
    assert bins[1]["bias"] is None and bins[-1]["snr_max"] is None


def test_pca_regression_recovers_a_linear_target():
    """A target that is a linear function of the pixels is recovered by PCA-all, R² near 1."""
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 64))
    coeffs = rng.normal(size=(400, 3))
    pixels = coeffs @ basis + 0.01 * rng.normal(size=(400, 64))
    target = {"t": coeffs @ np.array([1.0, -2.0, 0.5])}
    result = pca_baseline(pixels[:300], {"t": target["t"][:300]}, pixels[300:], {"t": target["t"][300:]},
                          n_components=10)
    assert result["all"]["t"] > 0.99
    assert result["best_single"]["t"] < result["all"]["t"]


def test_half_light_radius_of_a_rendered_galaxy():
    """The growth-curve radius of a noiseless round galaxy is close to its true half-light radius."""
    row = {"flux": 1e4, "half_light_radius": 1.0, "sersic_n": 1.0, "ellipticity": 0.0,
           "position_angle": 0.0, "x": 16.0, "y": 16.0}
    cfg = tiny_sim("psf.fwhm=0.1")
    assert half_light_radius_of(render_noiseless(cfg, row).array, 0.2) == pytest.approx(1.0, rel=0.1)


def test_evaluate_writes_metrics_figures_and_report(tiny_run, tiny_dataset, tmp_path):
    """evaluate writes metrics.json with the R² table, the paper's figures and a self-contained report."""
    sweep = simulate_dataset(tiny_sim("n_galaxies=8", "sweep.parameter=flux"), tmp_path / "sweep_flux")
    metrics = evaluate_run(tiny_run, tiny_dataset.path, [sweep.path], remeasure=False)
    out = tiny_run / "eval"
    saved = json.loads((out / "metrics.json").read_text())
    for method in ("cae", "pca_best_single", "pca_all"):
        assert set(saved["r2"][method]) == {"flux", "half_light_radius"}
        assert all(np.isfinite(v) for v in saved["r2"][method].values())
    assert saved["n_test"] == metrics["n_test"] == 6
    assert saved["controlled"]["flux"]["n"] == 8
    assert len(saved["relative_error"]["flux"]["snr_bins"]) == 4
    for name in ("fig2_reconstructions", "fig3_controlled", "fig4_traversals", "fig5_r2_comparison"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    report = (out / "report.html").read_text()
    assert "data:image/png;base64," in report and 'src="http' not in report
    assert "Results against the paper" in report and "the paper trains for 100" in report
    # The physical-limit comparison, on the same six test galaxies.
    assert saved["classical"]["n"] == 6 and saved["speedup_vs_classical"] > 0
    assert set(saved["crb"]) == {"flux", "half_light_radius", "sersic_n", "g1", "g2", "x", "y"}
    assert set(saved["comparison"]) == {"cae", "pca_all", "classical"}
    assert set(saved["comparison"]["classical"]) == set(saved["crb"])
    row = saved["comparison"]["cae"]["flux"]["all"]
    assert set(row) == {"n", "bias", "scatter", "outliers", "r2", "efficiency"} and row["n"] == 6
    assert {"all", "snr 0-10", "snr > 20", "n <= 3", "n > 3"} <= set(saved["comparison"]["cae"]["flux"])
    assert saved["efficiency"]["classical"]["flux"]["all"] > 0
    for name in ("methods_vs_true", "error_vs_snr", "time_per_galaxy"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    assert "Against the physical limit" in report


def test_evaluate_refuses_a_sweep_that_is_not_one(tiny_run, tiny_dataset):
    """Passing an ordinary dataset as a controlled set is refused by name."""
    with pytest.raises(ValueError, match="not a controlled set"):
        evaluate_run(tiny_run, tiny_dataset.path, [tiny_dataset.path])


def test_efficiency_is_one_at_the_bound_and_half_at_twice_it():
    """Estimates scattered exactly at the Cramér–Rao bound have efficiency ~1; at 2x, ~0.5."""
    from galcae.evaluate.comparison import summary

    rng = np.random.default_rng(0)
    truth = rng.uniform(1000, 5000, 20000)
    crb = 0.05 * truth
    at_bound = summary("flux", truth, truth + rng.normal(0, crb), crb)
    twice = summary("flux", truth, truth * 1.1 + rng.normal(0, 2 * crb), crb)
    assert at_bound["efficiency"] == pytest.approx(1.0, abs=0.03)
    assert at_bound["scatter"] == pytest.approx(0.05, rel=0.03) and abs(at_bound["bias"]) < 0.003
    assert twice["efficiency"] == pytest.approx(0.5, abs=0.03) and twice["bias"] == pytest.approx(0.1, abs=0.005)


def test_traversals_remeasured_by_the_classical_fit(tiny_run, tiny_dataset):
    """Each latent is moved, each decoded image fitted: changes in CRB units, a response and a
    leak per moved parameter, failures counted rather than hidden."""
    from galcae.checkpoint import load_model
    from galcae.evaluate.disentangle import remeasured_traversals

    model = load_model(tiny_run)
    z0 = model.encode(tiny_dataset.load_images([0]))[0]
    row = {k: v[0] for k, v in tiny_dataset.params.items()}
    out = remeasured_traversals(model, z0, {}, tiny_dataset.config.for_galaxy(row),
                                np.linspace(-1, 1, 3), max_seconds=2.0)
    assert set(out["traversals"]) == {"flux", "half_light_radius"}
    flux = out["traversals"]["flux"]
    assert len(flux["change_in_crb_units"]["sersic_n"]) == 3 and len(flux["fit_status"]) == 3
    assert set(flux) >= {"response", "leak", "leak_parameter", "intended", "fitted", "own_change"}
    own = np.abs(flux["change_in_crb_units"]["flux"])
    own = np.max(own[np.isfinite(own)]) if np.isfinite(own).any() else np.nan
    assert flux["own_change"] == pytest.approx(own, nan_ok=True)
    assert flux["cross_talk"] == pytest.approx(flux["leak"] / own, nan_ok=True)
