"""``galcae evaluate``: the paper's Section 4 on held-out galaxies, into ``RUN/eval/``."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from ..checkpoint import load_model, sha256_of
from ..dataset import PARAMS, Dataset
from ..outputs import atomic_directory, output_lock
from ..refine import refine_blocks, training_config
from ..train import SPLIT, split_indices, train_config_of
from ..crb import FIT_PARAMETERS
from . import comparison, figures
from ..conditions import condition_table
from .calibration import calibration_table, latent_errors, worst_miss
from .comparison import CONDITION_COLUMNS
from .disentangle import remeasured_traversals, sky_free
from .metrics import binned_error_summary, error_summary, r2, r2_log10
from .pca import pca_baseline
from .report import write_report

log = logging.getLogger(__name__)

#: Lowest S/N of the galaxy the latent traversals start from (any, if no test galaxy has it).
TRAVERSAL_MIN_SNR = 30.0
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


def _sweep_section(model, path) -> tuple[dict, dict]:
    """Latents of a controlled set against its swept parameter (Fig. 3) and their R²."""
    sweep = Dataset.open(path)
    parameter = sweep.config.sweep.parameter
    if parameter is None:
        raise ValueError(f"{path} is not a controlled set (its config has no sweep.parameter)")
    ok = sweep.usable
    values = sweep.params[parameter][ok]
    z = model.encode(sweep.load_images(ok))
    latents = {name: z[:, k] for k, name in enumerate(model.supervised)}
    metrics = {"dataset": str(path), "n": int(ok.size)}
    for name, zk in latents.items():
        # R² of a straight line through (value, z): the paper's "tracks nearly linearly".
        metrics[f"r2_linear_z_{name}"] = float(np.corrcoef(values, zk)[0, 1] ** 2)
        metrics[f"r2_linear_z_{name}_vs_log"] = float(np.corrcoef(np.log10(values), zk)[0, 1] ** 2) \
            if np.all(values > 0) else None
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
                 test_fraction: float | None = None, refine_snr: float | None = None) -> dict:
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
    cfg = train_config_of(run_dir)
    dataset = Dataset.open(dataset_path)
    if test_fraction is not None:
        cfg = dataclasses.replace(cfg, test_fraction=test_fraction)
    train_ids, test_ids = split_indices(dataset, cfg)
    same_dataset = sha256_of(dataset.path / PARAMS) == model.meta["dataset"]["params_sha256"]
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
    truth = {n: params[n][test_ids] for n in names}
    snr = params["snr"][test_ids]
    positive = [n for n in names if np.all(truth[n] > 0)]  # scored in log10 as well

    test_images = dataset.load_images(test_ids)
    dataset.check_finite_images(test_images, test_ids)
    # A conditioned model is told each galaxy's PSF, and measures the noise on the stamp.
    conditions = {n: params[n][test_ids] for n in model.conditions if n in params}
    model.predict(test_images[:model.batch_size],
                  {k: v[:model.batch_size] for k, v in conditions.items()})  # warm-up
    start = time.perf_counter()
    predicted = model.predict(test_images, conditions)
    cae_seconds = (time.perf_counter() - start) / len(test_ids)
    pca_train = train_ids[np.linspace(0, len(train_ids) - 1, min(len(train_ids), PCA_MAX_TRAIN))
                          .astype(int)]
    as_pixels = model.normalization.forward  # PCA sees exactly what the CAE sees
    train_pixels = as_pixels(dataset.load_images(pca_train))
    test_pixels = as_pixels(test_images)
    pca = pca_baseline(train_pixels, {n: params[n][pca_train] for n in names}, test_pixels, truth)
    pca_log = pca_baseline(train_pixels, {n: np.log10(params[n][pca_train]) for n in positive},
                           test_pixels, {n: np.log10(truth[n]) for n in positive})

    metrics = {
        "run": str(run_dir), "dataset": str(dataset.path), "same_dataset_as_training": same_dataset,
        "n_train": int(len(train_ids)), "n_test": int(len(test_ids)),
        "epochs_trained": model.epochs_trained, "epochs_paper": 100,
        "r2": {"cae": {n: r2(truth[n], predicted[n]) for n in names},
               "pca_best_single": pca["best_single"], "pca_all": pca["all"]},
        "r2_log10": {"cae": {n: r2_log10(truth[n], predicted[n]) for n in positive},
                     "pca_best_single": pca_log["best_single"], "pca_all": pca_log["all"]},
        "pca": {"n_components": pca["n_components"], "best_component": pca["best_component"],
                "input": "the CAE's normalised pixels"},
        "cae_nonpositive": {n: int(np.sum(predicted[n] <= 0)) for n in positive},
        "relative_error": {n: {"all": error_summary(truth[n], predicted[n]),
                               "snr_bins": binned_error_summary(truth[n], predicted[n], snr)}
                           for n in positive},
    }
    if model.network.arch.predict_variance:
        z_pred, sigma, tail = latent_errors(model, test_images, conditions)
        table = calibration_table(names, model.scaling.to_latent(truth), z_pred, sigma, snr, tail)
        metrics["calibration"] = {"coverage": table, "worst_miss_points": worst_miss(table),
                                  "space": "latent (log10 for log-scaled parameters)"}

    def refined(n: int) -> dict:
        """``{"cae+fit": estimates}`` of the first ``n`` test galaxies (none without refine_snr)."""
        if refine_snr is None:
            return {}
        values, done, seconds = refine_blocks(training_config(model.meta), test_images[:n],
                                              {k: v[:n] for k, v in conditions.items()},
                                              {k: predicted[k][:n] for k in names}, refine_snr, workers)
        count = int(done["refined"].sum())
        metrics["refinement"] = {"min_snr": refine_snr, "n": n, "refined": count,
                                 "failed": int(done["refine_failed"].sum()),
                                 "seconds_per_refined": seconds / max(count, 1),
                                 "cae_seconds_per_galaxy": cae_seconds}
        return {"cae+fit": values}

    n_classical = len(test_ids) if classical is None else min(classical, len(test_ids))
    if n_classical > 0:
        metrics.update(comparison_section(dataset, test_ids[:n_classical], test_images[:n_classical],
                                           {n: predicted[n][:n_classical] for n in names},
                                           {n: pca["predicted"][n][:n_classical] for n in names},
                                           cae_seconds, workers, refined(n_classical)))
    elif bound > 0:
        metrics.update(efficiency_section(dataset, test_ids[:bound],
                                          {n: predicted[n][:bound] for n in names}, workers,
                                          refined(min(bound, len(test_ids)))))

    with output_lock(run_dir / "eval"), atomic_directory(run_dir / "eval", overwrite=True) as out:
        fig_dir = out / "figures"
        softening = model.normalization.softening
        examples = test_ids[np.argsort(snr)][np.linspace(0, len(test_ids) - 1,
                                                         min(n_examples, len(test_ids))).astype(int)]
        position = np.searchsorted(test_ids, examples)
        figures.reconstructions(test_images[position],
                                model.reconstruct(test_images[position],
                                                  {k: v[position] for k, v in conditions.items()}),
                                softening, fig_dir / "fig2_reconstructions.png",
                                titles=[f"S/N {s:.0f}" for s in snr[position]])
        if sweeps:
            sections = [_sweep_section(model, p) for p in sweeps]
            figures.controlled_sweeps([s for s, _ in sections], fig_dir / "fig3_controlled.png")
            metrics["controlled"] = {s["parameter"]: m for s, m in sections}
        # Traverse from the test galaxy whose supervised latents are closest to the median of
        # those with S/N >= 30: the decoded images of a galaxy near the detection limit are
        # too faint for the classical fit to re-measure (the fits ran past their time limit).
        z = predicted["latents"]
        pool = np.flatnonzero(snr >= TRAVERSAL_MIN_SNR)
        pool = pool if len(pool) else np.arange(len(z))
        zp = z[pool, :len(names)]
        centre = pool[np.argmin(np.abs(zp - np.median(zp, 0)).sum(1))]
        steps = np.linspace(-1.5, 1.5, 7)
        centre_conditions = {k: float(v[0]) for k, v in condition_table(
            model.conditions, test_images[centre:centre + 1],
            {k: v[centre] for k, v in conditions.items()}).items()}
        rows, measured = _traversal_section(model, z[centre], steps, dataset.config.pixel_scale,
                                            centre_conditions)
        figures.traversals(rows, steps, softening, fig_dir / "fig4_traversals.png")
        metrics["traversal"] = measured
        if remeasure:
            row = {k: float(v[test_ids[centre]]) for k, v in params.items() if k in CONDITION_COLUMNS}
            remeasured = remeasured_traversals(model, z[centre], centre_conditions,
                                               dataset.config.for_galaxy(row), np.linspace(-1, 1, 5))
            figures.remeasured_traversals(remeasured, fig_dir / "disentanglement.png")
            metrics["disentanglement"] = {
                "galaxy": int(test_ids[centre]), "method": "classical fit of each decoded image",
                "failed_fits": int(sum(s != "ok" for t in remeasured["traversals"].values()
                                       for s in t["fit_status"])),
                "fits": int(sum(len(t["fit_status"]) for t in remeasured["traversals"].values())),
                **{name: {"response": t["response"], "leak_crb_units": t["leak"],
                          "leak_parameter": t["leak_parameter"],
                          "own_change_crb_units": t["own_change"], "cross_talk": t["cross_talk"]}
                   for name, t in remeasured["traversals"].items()},
                "detail": remeasured}
        if "calibration" in metrics:
            figures.calibration(metrics["calibration"]["coverage"], fig_dir / "calibration.png")
        figures.r2_comparison(metrics["r2"], fig_dir / "fig5_r2_comparison.png")
        figures.predicted_vs_true(truth, {n: predicted[n] for n in names}, snr,
                                  fig_dir / "predicted_vs_true.png")
        if n_classical > 0:
            _comparison_figures(metrics.pop("_arrays"), fig_dir, metrics["timing"])
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_report(out / "report.html", metrics, model.meta, fig_dir,
                     loss_png=run_dir / "loss.png")
    log.info("evaluation written to %s", run_dir / "eval")
    return metrics


def comparison_section(dataset: Dataset, ids, images, cae: dict, pca: dict, cae_seconds: float,
                        workers: int, extra: dict | None = None) -> dict:
    """CAE, PCA-64 + regression and the classical fit on the same galaxies, against the CRB."""
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
        "_arrays": {"truth": truth, "snr": snr, "crb": crb, "estimates": estimates},
    }


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
    return {n: dataset.params[n][ids] for n in FIT_PARAMETERS + CONDITION_COLUMNS}


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
