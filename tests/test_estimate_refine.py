"""Refinement: the classical fit of bright stamps started at the CAE's values, and the
recalibration of its errors."""

from types import SimpleNamespace

import numpy as np
import pytest

from galcae.checkpoint import load_model
from galcae.conditions import stamp_noise_sigma
from galcae.config import load_stage
from galcae.estimate.cae import measure
from galcae.estimate.refine import calibrate_fit_errors, refine, stamp_config, widen_for_model_error
from galcae.physics import sky_sigma
from galcae.simulate import draw_parameters, render_chunk
from galcae.train import conditioning_inputs
from galcae.uncertainty import VarianceCalibration

from conftest import SEVEN


@pytest.fixture(scope="module")
def two_parameter(tiny_run, tiny_dataset):
    """The paper's model (flux and r½ only) on three stamps, and the refinement of its values."""
    model = load_model(tiny_run, device="cpu")
    images = tiny_dataset.load_images()[:3]
    cae = measure(model, images)
    out = refine(model.card.training_set, images, {}, cae, min_snr=0)
    return SimpleNamespace(cae=cae, out=out, flux=tiny_dataset.params["flux"][:3])


def test_refinement_of_a_two_parameter_model_updates_the_columns_it_has(two_parameter):
    """A flux and r½ model is refined on every stamp, adding only the S/N and status columns."""
    # The fit starts the other five parameters from HSM moments.
    out, cae = two_parameter.out, two_parameter.cae
    assert set(out) == set(cae) | {"snr", "refined", "refine_failed", "chi2_dof", "poor_fit",
                                   "neighbours_modelled", "hidden_neighbours"} and out["refined"].all()


def test_refinement_of_a_two_parameter_model_does_not_worsen_the_flux(two_parameter):
    """The refined flux is as close to the truth as the CAE's, within 2%."""
    t = two_parameter
    assert np.all(np.abs(t.out["flux"] / t.flux - 1) < np.abs(t.cae["flux"] / t.flux - 1) + 0.02)


def test_refinement_of_a_two_parameter_model_shrinks_the_flux_error(two_parameter):
    """The fit's flux errors are smaller than the CAE's."""
    assert np.all(two_parameter.out["flux_err"] < two_parameter.cae["flux_err"])


def test_refinement_sky_level_reproduces_the_measured_noise():
    """The config of stamp i has the sky level that gives its measured noise, and its PSF."""
    sim = load_stage("simulate", "survey", [])
    noise = sky_sigma(np.array([150.0, 1800.0]), sim.noise.gain, sim.noise.read_noise)
    cfg = stamp_config(sim, {"psf_fwhm": [0.7, 1.1], "psf_beta": [3.0, 4.0], "noise_sigma": noise}, 1)
    assert cfg.noise.sky_level == pytest.approx(1800.0) and cfg.psf.fwhm == 1.1 and cfg.psf.beta == 4.0


@pytest.fixture(scope="module")
def fit_error_calibration(survey_run, survey_dataset):
    """What tools/ship_model.py --refine-calibration fits: the fit's errors recalibrated on
    eight refined survey stamps (bins of 4); and how many were refined."""
    model = load_model(survey_run, device="cpu")
    ids = np.arange(8)
    images = survey_dataset.load_images(ids)
    conditions = conditioning_inputs(survey_dataset, images, model.conditions, ids)
    return calibrate_fit_errors(model.card.training_set, images, conditions,
                                measure(model, images, conditions),
                                {n: survey_dataset.params[n][ids] for n in SEVEN}, 0.0, per_bin=4)


def test_fit_errors_are_recalibrated_on_the_refined_stamps(fit_error_calibration):
    """Nearly every bright simulated stamp is refined, and only those are used."""
    _, refined = fit_error_calibration
    assert 6 <= refined <= 8


def test_fit_error_calibration_has_snr_and_tail_stages(fit_error_calibration):
    """The fit's errors are recalibrated per bin of error and of S/N, with 95% tails per parameter."""
    fitted, _ = fit_error_calibration
    assert fitted.needs_snr and len(fitted.tail_scale) == 7


def test_fit_error_calibration_survives_model_json(fit_error_calibration):
    """The calibration reads back equal from its dict."""
    fitted, _ = fit_error_calibration
    assert VarianceCalibration.from_dict(fitted.to_dict()) == fitted


def test_fit_error_calibration_is_finite_and_positive(fit_error_calibration):
    """Tail factors are finite and error scales positive."""
    fitted, _ = fit_error_calibration
    assert np.all(np.isfinite(fitted.tail_scale)) and np.all(np.asarray(fitted.scale) > 0)


BRIGHT = slice(1, None)


@pytest.fixture(scope="module")
def shipped_refinement():
    """Five bright survey galaxies and one (the first) far below S/N 30, measured by the shipped
    model and refined above S/N 30."""
    model = load_model("survey", device="cpu")
    cfg = load_stage("simulate", "survey", ["n_galaxies=5", "seed=98", "ranges.flux=[40000, 200000]",
                                            "ranges.half_light_radius=[0.4, 1.0]", "ranges.sersic_n=[0.8, 3]"])
    truth = draw_parameters(cfg)
    truth["flux"][0] = 400.0  # far below S/N 30
    images = render_chunk(cfg, truth)["images"]
    conditions = {"psf_fwhm": truth["psf_fwhm"], "psf_beta": truth["psf_beta"]}
    cae = measure(model, images, conditions)
    before = {k: v.copy() for k, v in cae.items()}
    conditions = {**conditions, "noise_sigma": stamp_noise_sigma(images)}
    out = refine(model.card.training_set, images, conditions, cae, min_snr=30)
    return SimpleNamespace(model=model, truth=truth, images=images, conditions=conditions, cae=cae,
                           before=before, out=out)


def test_refine_does_not_mutate_its_input(shipped_refinement):
    """The CAE's estimates passed in are left as they were."""
    t = shipped_refinement
    assert all(np.array_equal(t.cae[k], t.before[k], equal_nan=True) for k in t.before)


def test_a_stamp_below_the_threshold_keeps_the_caes_row(shipped_refinement):
    """A galaxy below S/N 30 is not refined and keeps the CAE's values."""
    t = shipped_refinement
    assert t.out["snr"][0] < 30 and not t.out["refined"][0] and t.out["flux"][0] == t.cae["flux"][0]


def test_bright_stamps_are_refined_without_failure(shipped_refinement):
    """Every galaxy above the threshold is refined, none fails."""
    done = shipped_refinement.out
    assert done["refined"][BRIGHT].all() and not done["refine_failed"].any()


def test_refinement_measures_the_snr_of_bright_stamps(shipped_refinement):
    """The bright galaxies' measured S/N is above 100."""
    assert np.all(shipped_refinement.out["snr"][BRIGHT] > 100)


def test_refined_rows_report_the_fits_reduced_chi2(shipped_refinement):
    """A Sérsic galaxy under its true PSF and noise fits to chi²/dof 1 over its pixels (a few
    hundred for these r½ of 0.4-1": each within 0.15, about 2 sigma, and their median within
    0.05); unrefined rows have none."""
    from galcae.physics import sky_sigma

    t = shipped_refinement
    noise = sky_sigma(t.truth["sky_level"], 1.0, 5.0)  # the survey preset's gain and read noise
    done = refine(t.model.card.training_set, t.images, {**t.conditions, "noise_sigma": noise}, t.cae, min_snr=30)
    assert np.isnan(done["chi2_dof"][0])
    assert np.all(np.abs(done["chi2_dof"][BRIGHT] - 1) < 0.15), done["chi2_dof"]
    assert abs(np.median(done["chi2_dof"][BRIGHT]) - 1) < 0.05, done["chi2_dof"]


def test_refined_errors_are_smaller_than_the_caes(shipped_refinement):
    """Bright galaxies get the classical fit's (smaller) errors, for all seven parameters."""
    t = shipped_refinement
    for name in SEVEN:
        assert np.all(t.out[f"{name}_err"][BRIGHT] < t.cae[f"{name}_err"][BRIGHT]), name


def test_refined_values_cover_the_truth(shipped_refinement):
    """The refined values lie within 4 of their errors of the truth."""
    t = shipped_refinement
    for name in SEVEN:
        pulls = np.abs(t.out[name][BRIGHT] - t.truth[name][BRIGHT]) / t.out[f"{name}_err"][BRIGHT]
        assert np.all(pulls < 4), (name, pulls)


def test_refinement_updates_the_derived_ellipticity(shipped_refinement):
    """|g| of the refined rows is derived anew from the refined g1, g2."""
    t = shipped_refinement
    assert not np.array_equal(t.out["ellipticity"][BRIGHT], t.cae["ellipticity"][BRIGHT])


@pytest.fixture(scope="module")
def recalibrated(shipped_refinement):
    """The same refinement with a recalibration of the fit's errors: twice as large, 95%
    intervals 1.5x wider than Gaussian."""
    t = shipped_refinement
    doubled = VarianceCalibration(edges=((0.0, 0.0),) * 7, scale=((2.0,),) * 7, snr_edges=((-9.0, 99.0),) * 7,
                                  snr_scale=((1.0,),) * 7, tail_edges=((-99.0, 99.0),) * 7,
                                  tail_scale=((1.5,),) * 7)
    return refine(t.model.card.training_set, t.images, t.conditions, t.cae, min_snr=30, calibration=doubled)


def test_recalibration_leaves_unrefined_rows(shipped_refinement, recalibrated):
    """The recalibration of the fit's errors does not touch the row the CAE kept."""
    assert recalibrated["flux_err"][0] == shipped_refinement.cae["flux_err"][0]


def test_recalibration_scales_the_refined_errors(shipped_refinement, recalibrated):
    """The refined rows' errors are the fit's times the calibration's factor."""
    out = shipped_refinement.out
    for name in SEVEN:
        assert np.allclose(recalibrated[f"{name}_err"][BRIGHT], 2 * out[f"{name}_err"][BRIGHT]), name


def test_recalibration_widens_the_refined_95_intervals_by_its_tail(shipped_refinement, recalibrated):
    """The refined rows' 95% intervals widen by the error factor times the tail factor."""
    out = shipped_refinement.out
    for name in SEVEN:
        assert np.allclose(recalibrated[f"{name}_hi95"][BRIGHT] - recalibrated[name][BRIGHT],
                           2 * 1.5 * (out[f"{name}_hi95"][BRIGHT] - out[name][BRIGHT])), name


def test_model_error_floor_adds_in_quadrature():
    """A floor is a fraction of the value for flux, r½ and n, absolute for g1; it adds in
    quadrature; a chi²/dof above 1 scales the fit's error by its root, below 1 not at all."""
    err = np.array([[30.0, 0.01, 0.02], [30.0, 0.01, 0.02]])
    values = np.array([[4000.0, 0.5, 0.1], [4000.0, 0.5, 0.1]])
    widened = widen_for_model_error(err, values, np.array([0.9, 4.0]), ["flux", "half_light_radius", "g1"],
                                    {"flux": 0.01, "g1": 0.03})
    assert widened[0] == pytest.approx([np.hypot(30, 40), 0.01, np.hypot(0.02, 0.03)])
    assert widened[1] == pytest.approx([np.hypot(60, 40), 0.02, np.hypot(0.04, 0.03)])


def test_a_stamp_the_model_cannot_fit_is_flagged_and_its_errors_widened(shipped_refinement):
    """A bright knot on a galaxy (a star-forming clump, a superposed star): the fit's chi² over
    the galaxy is far above the noise's, the row is flagged poor_fit and its errors grow by
    sqrt(chi2_dof); clean stamps are not flagged."""
    t = shipped_refinement
    images = t.images.copy()
    x, y = int(t.truth["x"][1]), int(t.truth["y"][1])
    images[1, y + 2:y + 4, x + 2:x + 4] += 10 * t.conditions["noise_sigma"][1]
    out = refine(t.model.card.training_set, images, t.conditions, t.cae, min_snr=30)
    assert out["poor_fit"][1] and out["chi2_dof"][1] > 1.2
    assert not t.out["poor_fit"].any()
    assert out["flux_err"][1] > 1.05 * t.out["flux_err"][1]


def test_the_cards_model_error_widens_refined_rows_only(shipped_refinement):
    """The card's floors widen the refined rows' errors and 95% intervals; the CAE's rows keep theirs."""
    t = shipped_refinement
    out = refine(t.model.card.training_set, t.images, t.conditions, t.cae, min_snr=30,
                 model_error={"half_light_radius": 0.05})
    r = out["half_light_radius"][BRIGHT]
    assert np.all(out["half_light_radius_err"][BRIGHT] >= 0.05 * r)
    assert np.all(out["half_light_radius_hi95"][BRIGHT] - r >= 1.9 * 0.05 * r)
    assert out["half_light_radius_err"][0] == t.cae["half_light_radius_err"][0]
    assert np.array_equal(out["flux_err"], t.out["flux_err"])
