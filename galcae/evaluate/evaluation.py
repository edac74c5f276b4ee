"""``galcae evaluate``: the paper's Section 4 on held-out galaxies, into ``RUN/eval/``."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from ..card import MODEL_DEFAULT
from ..checkpoint import load_model, sha256_of
from ..conditions import condition_table
from ..dataset import PARAMS, Dataset
from ..estimate.refine import refine_blocks
from ..outputs import atomic_directory, output_lock
from ..params import FIT_PARAMETERS, OK, RENDER_CONDITIONS
from ..train import SPLIT, as_the_model_saw_them, conditioning_inputs, split_indices, train_config_of
from . import claims, comparison, figures
from .calibration import calibration_table, latent_errors, worst_miss
from .disentangle import OUTSIDE, remeasured_traversals, sky_free
from .metrics import binned_error_summary, error_summary, r2, r2_log10
from .pca import pca_baseline
from .report import write_report

log = logging.getLogger(__name__)

#: Lowest S/N of the galaxies the latent traversals start from (any, if no test galaxy has it).
TRAVERSAL_MIN_SNR = 30.0
#: Test galaxies whose traversals are re-measured (Fig. 4's numbers are their medians).
TRAVERSAL_GALAXIES = 5
#: Training images used to fit the PCA baseline (enough for 64 stable components).
PCA_MAX_TRAIN = 20000


def half_light_radius_of(image: np.ndarray, pixel_scale: float) -> float:
    """Half-light radius in arcsec of an image, from its growth curve about the centroid."""
    light = np.clip(image, 0.0, None)
    total = light.sum()
    if total <= 0:
        return float("nan")
    yy, xx = np.indices(image.shape) + 0.5
    cx, cy = (light * xx).sum() / total, (light * yy).sum() / total
    radius = np.hypot(xx - cx, yy - cy).ravel()
    order = np.argsort(radius)
    cumulative = np.cumsum(light.ravel()[order])
    return float(radius[order][np.searchsorted(cumulative, 0.5 * total)] * pixel_scale)


def controlled_set(path) -> Dataset:
    """A controlled set (Fig. 3), opened and checked before any work is done."""
    sweep = Dataset.open(path)
    if sweep.config.sweep.parameter is None:
        raise ValueError(f"{path} is not a controlled set (its config has no sweep.parameter)")
    return sweep


def _sweep_section(model, path, sweep: Dataset, test_std: dict) -> tuple[dict, dict]:
    """Latents of the controlled set ``sweep`` (opened from ``path``) against its swept
    parameter (Fig. 3), their R² and the claims' numbers (``test_std``: each supervised
    latent's spread over the test galaxies)."""
    parameter = sweep.config.sweep.parameter
    ok = sweep.usable
    values = sweep.params[parameter][ok]
    images = sweep.load_images(ok)
    # A conditioned model is told each stamp's PSF, as for the test galaxies.
    z = model.encode(images, conditioning_inputs(sweep, images, model.conditions, ok) if model.conditions else None)
    latents = {name: z[:, k] for k, name in enumerate(model.supervised)}
    metrics = {"dataset": str(path), "n": int(ok.size)}
    for name, zk in latents.items():
        # R² of a straight line through (value, z): the paper's "tracks nearly linearly".
        metrics[f"r2_linear_z_{name}"] = float(np.corrcoef(values, zk)[0, 1] ** 2)
        metrics[f"r2_linear_z_{name}_vs_log"] = float(np.corrcoef(np.log10(values), zk)[0, 1] ** 2) \
            if np.all(values > 0) else None
    predicted = model.scaling.to_physical(z[:, :len(model.supervised)])
    metrics["claims"] = claims.sweep_claims(values, latents, parameter, test_std, predicted)
    if parameter in model.supervised:
        bound = claims.resolvable_up_to(sweep, parameter)
        metrics["claims"]["resolvable_up_to"] = bound.pop("up_to")
        crb_of = bound.pop("crb_of")
        metrics["claims"]["crb"] = bound
        for name, other in metrics["claims"].get("other", {}).items():
            truth = sweep.params[name][ok]
            if name in crb_of and np.ptp(truth) == 0:  # a parameter the sweep holds fixed
                other.update(claims.bias_in_bounds(values, predicted[name], float(truth[0]), crb_of[name]))
    return {"parameter": parameter, "values": values, "latents": latents}, metrics


def _traversal_section(model, z0: np.ndarray, steps: np.ndarray, pixel_scale: float,
                       conditions: dict):
    """Decode while each supervised latent moves (Fig. 4); measure flux and size of each image."""
    rows, measured = {}, {}
    cond = {k: np.full(len(steps), float(v)) for k, v in conditions.items()}
    for k, name in enumerate(model.supervised):
        z = np.repeat(z0[None, :], len(steps), axis=0)
        z[:, k] += steps
        images = model.decode(z, cond)
        rows[name] = images
        galaxy = sky_free(images)  # over a whole stamp, the decoder's sky would swamp the flux
        flux = galaxy.sum(axis=(1, 2))
        radius = np.array([half_light_radius_of(im, pixel_scale) for im in galaxy])
        measured[name] = {"delta_z": steps.tolist(), "flux": flux.tolist(),
                          "half_light_radius": radius.tolist(),
                          # Change end to end relative to the unmoved galaxy: the moved
                          # quantity should change, the other should not.
                          "flux_change": float((flux[-1] - flux[0]) / flux[len(steps) // 2]),
                          "half_light_radius_change":
                              float((radius[-1] - radius[0]) / radius[len(steps) // 2])}
    return rows, measured


def evaluate_run(run_dir, dataset_path, sweeps=(), *, n_examples: int = 8, classical: int | None = None,
                 workers: int = 1, bound: int = 0, remeasure: bool = True,
                 test_fraction: float | None = None, refine_snr=MODEL_DEFAULT) -> dict:
    """Evaluate a trained run on the held-out split of ``dataset_path``; write ``RUN/eval``.

    Parameters
    ----------
    run_dir : path
        Run directory written by ``galcae train``.
    dataset_path : path
        Dataset to evaluate on. For the training dataset the held-out split is the one
        saved in ``RUN/split.json``; any other dataset is split the same seeded way.
    sweeps : paths
        Controlled sets (``sweep.parameter`` set) for Fig. 3.
    classical : int, optional
        Test galaxies to also fit the classical way and compare, with the Cramér–Rao
        bound, against the CAE and PCA [default: all of them]; 0 skips the comparison.
    workers : int
        Processes for the classical fits (a local Dask cluster when > 1). [default: 1]
    bound : int
        Without classical fits, test galaxies whose Cramér–Rao bound is computed to give the
        CAE's efficiency (all seven parameters, S/N bins). [default: 0]
    remeasure : bool
        Fit the decoded images of each latent traversal classically (disentanglement
        figure and numbers). [default: True]
    test_fraction : float, optional
        For a dataset other than the training set, the fraction held out for testing (the
        rest fits the PCA baseline) [default: the training split's].
    refine_snr : float, optional
        Also score ``cae+fit``: the CAE refined by the classical fit where the stamp's S/N
        is at least this (``galcae infer --refine-snr``), on the galaxies of the comparison
        or the bound.
    """
    run_dir = Path(run_dir)
    model = load_model(run_dir)
    refine_snr = model.card.refine_snr_for(refine_snr)
    sweeps = [(p, controlled_set(p)) for p in sweeps]
    dataset, test = held_out(run_dir, model, dataset_path, test_fraction)
    predicted, cae_seconds = _timed_predictions(model, test)
    pca, pca_log = _pca_baselines(model, dataset, test)
    metrics = accuracy_section(run_dir, dataset, model, test, predicted, pca, pca_log)
    if model.network.arch.predict_variance:
        metrics["calibration"] = calibration_section(model, test)
    arrays = None
    n_classical = len(test.ids) if classical is None else min(classical, len(test.ids))
    if n_classical > 0:
        extra = _refined(model, test, predicted, n_classical, refine_snr, workers, cae_seconds, metrics)
        section, arrays = comparison_section(dataset, test.ids[:n_classical], test.images[:n_classical],
                                             {n: predicted[n][:n_classical] for n in model.supervised},
                                             {n: pca["predicted"][n][:n_classical] for n in model.supervised},
                                             cae_seconds, workers, extra)
        metrics.update(section)
    elif bound > 0:
        extra = _refined(model, test, predicted, min(bound, len(test.ids)), refine_snr, workers, cae_seconds,
                         metrics)
        metrics.update(efficiency_section(dataset, test.ids[:bound],
                                          {n: predicted[n][:bound] for n in model.supervised}, workers, extra))
    with output_lock(run_dir / "eval"), atomic_directory(run_dir / "eval", overwrite=True) as out:
        fig_dir = out / "figures"
        reconstructions = model.reconstruct(test.images, test.conditions)
        _reconstruction_figure(model, test, reconstructions, n_examples, fig_dir)
        metrics["reconstruction"] = reconstruction_section(model, dataset, test, reconstructions)
        if sweeps:
            test_std = dict(zip(model.supervised, predicted["latents"][:, :len(model.supervised)].std(0)))
            sections = [_sweep_section(model, path, sweep, test_std) for path, sweep in sweeps]
            figures.controlled_sweeps([s for s, _ in sections], fig_dir / "fig3_controlled.png")
            metrics["controlled"] = {s["parameter"]: m for s, m in sections}
        metrics.update(traversal_sections(model, dataset, test, predicted["latents"], remeasure, fig_dir))
        metrics["claims"] = claims.verdicts(metrics)
        _summary_figures(metrics, test, predicted, model.supervised, arrays, fig_dir)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_report(out / "report.html", metrics, model.meta, fig_dir, loss_png=run_dir / "loss.png")
    log.info("evaluation written to %s", run_dir / "eval")
    return metrics


@dataclasses.dataclass
class HeldOut:
    """The test galaxies of an evaluation: ids, images, truths, S/N and conditions."""

    train_ids: np.ndarray
    ids: np.ndarray
    images: np.ndarray
    truth: dict  # supervised parameters
    snr: np.ndarray
    conditions: dict  # what a conditioned model is told: the PSF (the noise it measures)
    same_dataset: bool  # the training set's own held-out split

    @property
    def positive(self) -> list[str]:
        """Parameters positive for every test galaxy: scored in log10 as well."""
        return [n for n in self.truth if np.all(self.truth[n] > 0)]


def held_out(run_dir: Path, model, dataset_path, test_fraction: float | None) -> tuple[Dataset, HeldOut]:
    """The dataset and its test split: the run's own (``split.json``) on its training set,
    else the same seeded split of another dataset."""
    cfg = train_config_of(run_dir)
    dataset = Dataset.open(dataset_path)
    if test_fraction is not None:
        cfg = dataclasses.replace(cfg, test_fraction=test_fraction)
    train_ids, test_ids = split_indices(dataset, cfg)
    same_dataset = sha256_of(dataset.path / PARAMS) == model.card.provenance.params_sha256
    if same_dataset and test_fraction is not None:
        raise ValueError("test_fraction applies to datasets other than the training set")
    if same_dataset:
        saved = json.loads((run_dir / SPLIT).read_text())
        if saved["test"] != test_ids.tolist():
            raise ValueError(f"{run_dir / SPLIT} does not match the split of {dataset.path}")
    names = model.supervised
    dataset.check_finite([*names, *(n for n in model.conditions if n in dataset.params)],
                         np.concatenate([train_ids, test_ids]))
    params = dataset.params
    images = dataset.load_images(test_ids)
    dataset.check_finite_images(images, test_ids)
    as_the_model_saw_them(model, images, np.random.default_rng([len(test_ids), 7]))
    return dataset, HeldOut(train_ids, test_ids, images, {n: params[n][test_ids] for n in names},
                            params["snr"][test_ids],
                            {n: params[n][test_ids] for n in model.conditions if n in params}, same_dataset)


def _timed_predictions(model, test: HeldOut) -> tuple[dict, float]:
    """The CAE's predictions of the test galaxies and its seconds per galaxy (after a warm-up)."""
    model.predict(test.images[:model.batch_size],
                  {k: v[:model.batch_size] for k, v in test.conditions.items()})
    start = time.perf_counter()
    predicted = model.predict(test.images, test.conditions)
    return predicted, (time.perf_counter() - start) / len(test.ids)


def _pca_baselines(model, dataset: Dataset, test: HeldOut) -> tuple[dict, dict]:
    """PCA-64 + regression on the CAE's own normalised pixels, linear and in log10."""
    train = test.train_ids[np.linspace(0, len(test.train_ids) - 1, min(len(test.train_ids), PCA_MAX_TRAIN))
                           .astype(int)]
    as_pixels = model.normalization.forward  # PCA sees exactly what the CAE sees
    train_pixels = as_pixels(dataset.load_images(train))
    test_pixels = as_pixels(test.images)
    params = dataset.params
    pca = pca_baseline(train_pixels, {n: params[n][train] for n in test.truth}, test_pixels, test.truth)
    pca_log = pca_baseline(train_pixels, {n: np.log10(params[n][train]) for n in test.positive},
                           test_pixels, {n: np.log10(test.truth[n]) for n in test.positive})
    return pca, pca_log


def accuracy_section(run_dir: Path, dataset: Dataset, model, test: HeldOut, predicted: dict, pca: dict,
                     pca_log: dict) -> dict:
    """The paper's Table 2 and Fig. 5: R² of the CAE and of PCA, and relative errors."""
    names, truth, positive = model.supervised, test.truth, test.positive
    return {
        "run": str(run_dir), "dataset": str(dataset.path), "same_dataset_as_training": test.same_dataset,
        "n_train": int(len(test.train_ids)), "n_test": int(len(test.ids)),
        "epochs_trained": model.epochs_trained, "epochs_paper": 100,
        "r2": {"cae": {n: r2(truth[n], predicted[n]) for n in names},
               "pca_best_single": pca["best_single"], "pca_all": pca["all"]},
        "r2_log10": {"cae": {n: r2_log10(truth[n], predicted[n]) for n in positive},
                     "pca_best_single": pca_log["best_single"], "pca_all": pca_log["all"]},
        "pca": {"n_components": pca["n_components"], "best_component": pca["best_component"],
                "input": "the CAE's normalised pixels"},
        "cae_nonpositive": {n: int(np.sum(predicted[n] <= 0)) for n in positive},
        "relative_error": {n: {"all": error_summary(truth[n], predicted[n]),
                               "snr_bins": binned_error_summary(truth[n], predicted[n], test.snr)}
                           for n in positive},
    }


def calibration_section(model, test: HeldOut) -> dict:
    """Coverage of the variance head's (recalibrated) intervals, per parameter and S/N bin."""
    z_pred, sigma, tail = latent_errors(model, test.images, test.conditions)
    table = calibration_table(model.supervised, model.scaling.to_latent(test.truth), z_pred, sigma,
                              test.snr, tail)
    return {"coverage": table, "worst_miss_points": worst_miss(table),
            "space": "latent (log10 for log-scaled parameters)"}


def _refined(model, test: HeldOut, predicted: dict, n: int, refine_snr, workers: int, cae_seconds: float,
             metrics: dict) -> dict:
    """``{"cae+fit": estimates}`` of the first ``n`` test galaxies refined as ``galcae infer``
    refines them (none without ``refine_snr``); its counts and cost go to ``metrics``."""
    if refine_snr is None:
        return {}
    values, done, seconds = refine_blocks(model.card.training_set, test.images[:n],
                                          {k: v[:n] for k, v in test.conditions.items()},
                                          {k: predicted[k][:n] for k in model.supervised}, refine_snr, workers,
                                          calibration=model.card.refinement.calibration)
    count = int(done["refined"].sum())
    metrics["refinement"] = {"min_snr": refine_snr, "n": n, "refined": count,
                             "failed": int(done["refine_failed"].sum()),
                             "seconds_per_refined": seconds / max(count, 1),
                             "cae_seconds_per_galaxy": cae_seconds}
    return {"cae+fit": values}


def _reconstruction_figure(model, test: HeldOut, reconstructions: np.ndarray, n_examples: int,
                           fig_dir: Path) -> None:
    """Fig. 2: test galaxies spread in S/N, their reconstructions and residuals."""
    examples = test.ids[np.argsort(test.snr)][np.linspace(0, len(test.ids) - 1,
                                                          min(n_examples, len(test.ids))).astype(int)]
    position = np.searchsorted(test.ids, examples)
    figures.reconstructions(test.images[position], reconstructions[position], model.normalization.noise_sigma,
                            fig_dir / "fig2_reconstructions.png",
                            titles=[f"S/N {s:.0f}" for s in test.snr[position]])


def reconstruction_section(model, dataset: Dataset, test: HeldOut, reconstructions: np.ndarray) -> dict:
    """Fig. 2's numbers: the reconstructions' shapes and residual chi² per pixel."""
    galaxies = sky_free(reconstructions) if model.network.arch.decoder == "conv" else reconstructions
    return claims.reconstruction_claims(test.images, reconstructions, galaxies, test.snr,
                                        claims.input_variance(dataset, test.ids, reconstructions),
                                        dataset.config.pixel_scale)


def traversal_sections(model, dataset: Dataset, test: HeldOut, z: np.ndarray, remeasure: bool,
                       fig_dir: Path) -> dict:
    """Fig. 4 (decoded latent traversals, measured on the images) and, with ``remeasure``,
    the classical fit of each decoded image of :data:`TRAVERSAL_GALAXIES` test galaxies
    (the disentanglement numbers: the first galaxy's in detail, the medians as claims)."""
    names = model.supervised
    # Traverse from the test galaxies whose supervised latents are closest to the median of
    # those with S/N >= 30: the decoded images of a galaxy near the detection limit are
    # too faint for the classical fit to re-measure (the fits ran past their time limit).
    pool = np.flatnonzero(test.snr >= TRAVERSAL_MIN_SNR)
    pool = pool if len(pool) else np.arange(len(z))
    zp = z[pool, :len(names)]
    typical = pool[np.argsort(np.abs(zp - np.median(zp, 0)).sum(1), kind="stable")][:TRAVERSAL_GALAXIES]
    steps = np.linspace(-1.5, 1.5, 7)

    def conditions_of(i):
        return {k: float(v[0]) for k, v in condition_table(
            model.conditions, test.images[i:i + 1], {k: v[i] for k, v in test.conditions.items()}).items()}

    centre = typical[0]
    rows, measured = _traversal_section(model, z[centre], steps, dataset.config.pixel_scale, conditions_of(centre))
    figures.traversals(rows, steps, model.normalization.noise_sigma, fig_dir / "fig4_traversals.png")
    out = {"traversal": measured}
    if not remeasure:
        return out
    summaries = []
    for i in typical:
        row = {k: float(v[test.ids[i]]) for k, v in dataset.params.items() if k in RENDER_CONDITIONS}
        remeasured = remeasured_traversals(model, z[i], conditions_of(i), dataset.config.for_galaxy(row),
                                           np.linspace(-1, 1, 5))
        traversals = remeasured["traversals"]
        summaries.append({
            "galaxy": int(test.ids[i]), "method": "classical fit of each decoded image",
            "failed_fits": int(sum(s not in (OK, OUTSIDE) for t in traversals.values() for s in t["fit_status"])),
            "outside_bounds": int(sum(s == OUTSIDE for t in traversals.values() for s in t["fit_status"])),
            "fits": int(sum(len(t["fit_status"]) for t in traversals.values())),
            **{name: {"response": t["response"], "leak_crb_units": t["leak"], "leak_parameter": t["leak_parameter"],
                      "own_change_crb_units": t["own_change"], "cross_talk": t["cross_talk"]}
               for name, t in traversals.items()}})
        if i == centre:
            figures.remeasured_traversals(remeasured, fig_dir / "disentanglement.png")
            detail = remeasured
    out["disentanglement"] = {**summaries[0], "detail": detail, "others": summaries[1:]}
    out["traversal_claims"] = claims.traversal_claims(summaries)
    return out


def _summary_figures(metrics: dict, test: HeldOut, predicted: dict, names, arrays: dict | None,
                     fig_dir: Path) -> None:
    """Calibration, Fig. 5, predicted against true and, with classical fits, their comparison."""
    if "calibration" in metrics:
        figures.calibration(metrics["calibration"]["coverage"], fig_dir / "calibration.png")
    figures.r2_comparison(metrics["r2"], fig_dir / "fig5_r2_comparison.png")
    figures.predicted_vs_true(test.truth, {n: predicted[n] for n in names}, test.snr,
                              fig_dir / "predicted_vs_true.png")
    if arrays is not None:
        _comparison_figures(arrays, fig_dir, metrics["timing"])


def comparison_section(dataset: Dataset, ids, images, cae: dict, pca: dict, cae_seconds: float,
                        workers: int, extra: dict | None = None) -> tuple[dict, dict]:
    """CAE, PCA-64 + regression and the classical fit on the same galaxies, against the CRB;
    and the arrays behind it (for the figures)."""
    cfg = dataset.config
    truth = _truth_for_bounds(dataset, ids)
    snr = dataset.params["snr"][ids]
    fits, crb, _ = comparison.classical_fits(cfg, images, truth, workers)
    estimates = {"cae": cae, **(extra or {}), "pca_all": pca,
                 "classical": {n: fits[n] for n in FIT_PARAMETERS}}
    compared = comparison.compare(truth, snr, crb, estimates)
    # Per galaxy with `workers` cores fitting: the fits' own times (the CRB runs in the same
    # tasks and is not the fit's cost), shared among the workers.
    classical_seconds = float(np.sum(fits["seconds"])) / workers / len(ids)
    return {
        "crb": {n: {"median": float(np.median(crb[n])),
                    **({"median_relative": float(np.median(crb[n] / truth[n]))}
                       if n in comparison.RELATIVE else {})} for n in FIT_PARAMETERS},
        "comparison": compared,
        "efficiency": _efficiencies(compared),
        "classical": {**comparison.fit_failures(fits["status"]), "workers": workers,
                      "seconds_per_galaxy": classical_seconds,
                      "median_fit_seconds": float(np.median(fits["seconds"])),
                      "method": "GalSim + scipy least_squares (exact PSF, per-pixel variance)"},
        "timing": {"cae": cae_seconds, "classical": classical_seconds},
        "speedup_vs_classical": classical_seconds / cae_seconds,
    }, {"truth": truth, "snr": snr, "crb": crb, "estimates": estimates}


def efficiency_section(dataset: Dataset, ids, cae: dict, workers: int, extra: dict | None = None) -> dict:
    """The CAE (and ``extra`` estimates) against the Cramér–Rao bound alone (no classical
    fits): bias, scatter and efficiency of every supervised parameter, overall, in S/N bins
    and by Sérsic n."""
    truth = _truth_for_bounds(dataset, ids)
    crb = comparison.crb_only(dataset.config, truth, workers)
    compared = comparison.compare(truth, dataset.params["snr"][ids], crb, {"cae": cae, **(extra or {})})
    return {"crb": {n: {"median": float(np.median(crb[n]))} for n in FIT_PARAMETERS},
            "comparison": compared, "efficiency": _efficiencies(compared)}


def _truth_for_bounds(dataset: Dataset, ids) -> dict:
    """The truth the fits and bounds of galaxies ``ids`` need: parameters and conditions."""
    return {n: dataset.params[n][ids] for n in FIT_PARAMETERS + RENDER_CONDITIONS}


def _efficiencies(compared: dict) -> dict:
    """``{method: {parameter: {subset: efficiency}}}`` of a :func:`comparison.compare` table."""
    return {m: {n: {subset: s.get("efficiency") for subset, s in by_subset.items()}
                for n, by_subset in per_param.items()} for m, per_param in compared.items()}


def _comparison_figures(arrays: dict, fig_dir: Path, timing: dict) -> None:
    names = list(arrays["estimates"]["cae"])
    figures.methods_vs_true(arrays["truth"], arrays["estimates"], names, fig_dir / "methods_vs_true.png")
    figures.error_vs_snr(arrays["truth"], arrays["estimates"], arrays["crb"], arrays["snr"], names,
                         fig_dir / "error_vs_snr.png")
    figures.time_per_galaxy(timing, fig_dir / "time_per_galaxy.png")
