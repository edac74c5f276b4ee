"""``galcae evaluate``: metrics, figures and the report of a run on its held-out galaxies."""

import contextlib
import io
import json
import shutil
from importlib import resources
from types import SimpleNamespace

import numpy as np
import pytest

from galcae.cli import main
from galcae.config import load_stage
from galcae.evaluate import evaluate_run
from galcae.evaluate.evaluation import half_light_radius_of
from galcae.physics import render_noiseless
from galcae.simulate import simulate_dataset

from conftest import TINY_SURVEY, tiny_sim


def test_half_light_radius_of_a_rendered_galaxy():
    """The growth-curve radius of a noiseless round galaxy is close to its true half-light radius."""
    row = {"flux": 1e4, "half_light_radius": 1.0, "sersic_n": 1.0, "ellipticity": 0.0,
           "position_angle": 0.0, "x": 16.0, "y": 16.0}
    cfg = tiny_sim("psf.fwhm=0.1")
    assert half_light_radius_of(render_noiseless(cfg, row).array, 0.2) == pytest.approx(1.0, rel=0.1)


def _written(run):
    """What RUN/eval holds now: metrics.json, the report's text and each figure's size."""
    out = run / "eval"
    return SimpleNamespace(saved=json.loads((out / "metrics.json").read_text()),
                           report=(out / "report.html").read_text(),
                           figures={p.stem: p.stat().st_size for p in (out / "figures").glob("*.png")})


@pytest.fixture(scope="module")
def evaluated(tiny_run, tiny_dataset, tmp_path_factory):
    """The tiny run evaluated on its dataset with a flux sweep (no re-measured traversals)."""
    sweep = simulate_dataset(tiny_sim("n_galaxies=8", "sweep.parameter=flux"),
                             tmp_path_factory.mktemp("sweeps") / "sweep_flux")
    metrics = evaluate_run(tiny_run, tiny_dataset.path, [sweep.path], remeasure=False)
    written = _written(tiny_run)
    written.metrics = metrics
    return written


def test_metrics_hold_the_r2_table(evaluated):
    """metrics.json holds a finite R² of each supervised parameter for the CAE and both PCA baselines."""
    for method in ("cae", "pca_best_single", "pca_all"):
        assert set(evaluated.saved["r2"][method]) == {"flux", "half_light_radius"}
        assert all(np.isfinite(v) for v in evaluated.saved["r2"][method].values())


def test_metrics_count_the_held_out_galaxies(evaluated):
    """The saved and returned metrics count the six held-out galaxies."""
    assert evaluated.saved["n_test"] == evaluated.metrics["n_test"] == 6


def test_metrics_score_the_controlled_set(evaluated):
    """The flux sweep's eight galaxies are scored."""
    assert evaluated.saved["controlled"]["flux"]["n"] == 8


def test_the_papers_claims_are_measured_and_judged(evaluated):
    """Fig. 2's shapes and chi², Fig. 3's flatness and monotonic range are measured; each
    becomes a verdict row with the paper's sentence, in metrics.json and in the report."""
    saved = evaluated.saved
    assert saved["reconstruction"]["chi2_per_pixel"][0]["snr_min"] == 0.0
    sweep = saved["controlled"]["flux"]["claims"]
    assert np.isfinite(sweep["other_range_in_std"]) and sweep["resolvable_up_to"] > 0
    # r½, held fixed over the flux sweep: how far its prediction misses, in its bound.
    assert np.isfinite(sweep["other"]["half_light_radius"]["largest_miss_in_crb"])
    figures = {row["figure"] for row in saved["claims"]}
    assert "fig3" in figures and all(row["sentence"] for row in saved["claims"])
    assert "The paper's claims for Figs. 2–4, measured" in evaluated.report
    # The ablation's table as galcae ships it, with its provenance, every variant a row.
    table = json.loads(resources.files("galcae").joinpath("data", "paper_ablation.json").read_text("utf-8"))
    assert f"The ablation's table ({len(table['rows'])} variants" in evaluated.report
    assert f"commit {table['commit']}" in evaluated.report
    assert evaluated.report.count("<td>centred, log-uniform + physical decoder") >= 1


def test_metrics_give_relative_errors_per_snr_bin(evaluated):
    """The flux's relative errors are summarised in four S/N bins."""
    assert len(evaluated.saved["relative_error"]["flux"]["snr_bins"]) == 4


def test_the_papers_figures_are_written(evaluated):
    """Figures 2 to 5 of the paper are written."""
    for name in ("fig2_reconstructions", "fig3_controlled", "fig4_traversals", "fig5_r2_comparison"):
        assert evaluated.figures.get(name, 0) > 1000, name


def test_report_is_self_contained(evaluated):
    """The report embeds its figures and loads nothing from the network."""
    assert "data:image/png;base64," in evaluated.report and 'src="http' not in evaluated.report


def test_report_compares_against_the_paper(evaluated):
    """The report sets the results against the paper's, noting the paper's 100 epochs."""
    assert "Results against the paper" in evaluated.report and "the paper trains for 100" in evaluated.report


def test_classical_fits_run_on_the_same_test_galaxies(evaluated):
    """The physical-limit comparison fits the same six test galaxies, and times the speed-up."""
    assert evaluated.saved["classical"]["n"] == 6 and evaluated.saved["speedup_vs_classical"] > 0


def test_crb_of_all_seven_parameters(evaluated):
    """The Cramér–Rao bound is given for all seven parameters."""
    assert set(evaluated.saved["crb"]) == {"flux", "half_light_radius", "sersic_n", "g1", "g2", "x", "y"}


def test_comparison_covers_each_method(evaluated):
    """The CAE, PCA-all and the classical fit are compared; the fit on all bounded parameters."""
    saved = evaluated.saved
    assert set(saved["comparison"]) == {"cae", "pca_all", "classical"}
    assert set(saved["comparison"]["classical"]) == set(saved["crb"])


def test_comparison_rows_and_subsets(evaluated):
    """Comparison rows (bias, scatter, outliers, R², efficiency) overall, per S/N bin and per n."""
    flux = evaluated.saved["comparison"]["cae"]["flux"]
    row = flux["all"]
    assert set(row) == {"n", "bias", "scatter", "outliers", "r2", "efficiency"} and row["n"] == 6
    assert {"all", "snr 0-10", "snr > 20", "n <= 3", "n > 3"} <= set(flux)


def test_efficiency_of_the_classical_fit(evaluated):
    """The classical fit's efficiency against the bound is positive."""
    assert evaluated.saved["efficiency"]["classical"]["flux"]["all"] > 0


def test_physical_limit_figures_are_written(evaluated):
    """Methods against truth, error against S/N and time per galaxy are plotted."""
    for name in ("methods_vs_true", "error_vs_snr", "time_per_galaxy"):
        assert evaluated.figures.get(name, 0) > 1000, name


def test_report_has_the_physical_limit_section(evaluated):
    """The report has its section against the physical limit."""
    assert "Against the physical limit" in evaluated.report


def test_evaluate_refuses_a_sweep_that_is_not_one(tiny_run, tiny_dataset):
    """Passing an ordinary dataset as a controlled set is refused by name."""
    with pytest.raises(ValueError, match="not a controlled set"):
        evaluate_run(tiny_run, tiny_dataset.path, [tiny_dataset.path])


@pytest.fixture(scope="module")
def refined_evaluation(survey_run, survey_dataset):
    """`galcae evaluate` of the conditioned run with refinement at any S/N, the bound of six
    galaxies and no classical comparison; and what it printed."""
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["evaluate", str(survey_run), str(survey_dataset.path), "--classical", "0",
                     "--bound", "6", "--refine-snr", "0", "--no-remeasure"]) == 0
    written = _written(survey_run)
    written.printed = printed.getvalue()
    return written


def test_evaluate_scores_the_refined_cae_beside_the_cae(refined_evaluation):
    """The comparison has the CAE and the CAE refined by the fit (cae+fit)."""
    assert set(refined_evaluation.saved["comparison"]) == {"cae", "cae+fit"}


def test_evaluate_counts_refined_and_failed_galaxies(refined_evaluation):
    """Each of the six bounded galaxies is either refined or a failed refinement."""
    refinement = refined_evaluation.saved["refinement"]
    assert refinement["n"] == 6 and refinement["refined"] + refinement["failed"] == 6


def test_refined_cae_is_scored_on_the_bounded_galaxies(refined_evaluation):
    """cae+fit is scored on the six galaxies of the bound."""
    assert refined_evaluation.saved["comparison"]["cae+fit"]["flux"]["all"]["n"] == 6


def test_evaluate_prints_and_reports_the_refined_cae(refined_evaluation):
    """The printed summary and the report both explain cae+fit."""
    assert "cae+fit: the CAE refined" in refined_evaluation.printed
    assert "cae+fit: the CAE refined" in refined_evaluation.report


def test_traversals_are_remeasured_on_several_galaxies(tiny_run, tiny_dataset, tmp_path, monkeypatch):
    """Fig. 4's numbers are medians over several test galaxies; the first is the one in
    detail. (The fits themselves: test_evaluate_disentangle; here they are stood in for.)"""
    from galcae.checkpoint import load_model
    from galcae.evaluate import evaluation

    started = []

    def remeasured(model, z0, conditions, cfg, steps):
        started.append(z0.copy())
        k = len(started)
        one = {"response": 1.0 / k, "leak": 0.1 * k, "leak_parameter": "x", "own_change": 1.0,
               "cross_talk": 0.1 * k, "fit_status": ["ok"] * len(steps), "delta_z": steps.tolist(),
               "intended": [0.0] * len(steps), "fitted": {}, "change_in_crb_units": {}}
        return {"crb_of_reference": {}, "traversals": {name: one for name in model.supervised}}

    monkeypatch.setattr(evaluation, "TRAVERSAL_GALAXIES", 3)
    monkeypatch.setattr(evaluation, "remeasured_traversals", remeasured)
    monkeypatch.setattr(evaluation.figures, "remeasured_traversals", lambda r, path: path.touch())
    model = load_model(tiny_run)
    dataset, test = evaluation.held_out(tiny_run, model, tiny_dataset.path, None)
    out = evaluation.traversal_sections(model, dataset, test, model.predict(test.images)["latents"], True, tmp_path)
    assert len(started) == 3 and len({z.tobytes() for z in started}) == 3  # three different galaxies
    assert len(out["disentanglement"]["others"]) == 2 and out["disentanglement"]["flux"]["response"] == 1.0
    assert out["traversal_claims"]["flux"] == {"galaxies": 3, "response_median": 0.5,
                                               "cross_talk_median": pytest.approx(0.2)}
    assert (tmp_path / "disentanglement.png").exists()



def test_a_conditioned_model_is_told_the_sweeps_psf(survey_run, survey_dataset, tmp_path):
    """A model conditioned on the PSF scores a controlled set with each stamp's PSF from its
    truth table, as it does the test galaxies (it used to be refused for want of them)."""
    run = shutil.copytree(survey_run, tmp_path / "run")
    sweep = simulate_dataset(load_stage("simulate", "paper", TINY_SURVEY + ["n_galaxies=8", "sweep.parameter=flux"]),
                             tmp_path / "sweep_flux")
    metrics = evaluate_run(run, survey_dataset.path, [sweep.path], remeasure=False, classical=0)
    assert metrics["controlled"]["flux"]["n"] == 8
