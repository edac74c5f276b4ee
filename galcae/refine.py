"""``galcae infer --refine-snr S`` (by default for a model shipped with a refine
calibration, :func:`default_refine_snr`): the classical fit, started at the CAE's estimate,
for the bright galaxies.

The CAE's scatter shrinks more slowly with S/N than the Cramér–Rao bound: above S/N 100
it is about twice the bound (README, "The survey model"), while a maximum-likelihood fit
reaches the bound there but costs far more than the CAE, and does worse than the CAE on
faint ones (it fails, or wanders). So the CAE measures every stamp, the stamp's S/N picks
the bright ones, and only those are fitted, starting from the CAE's values: their catalog
values and errors become the fit's (the inverse Hessian, which is the bound at high S/N).
The fit is :func:`galcae.batchfit.fit_batch`, the likelihood of the scipy + GalSim fit of
``galcae fit`` drawn and minimised in PyTorch, :data:`BATCH` stamps at a time, to
convergence (``benchmarks/survey_model.py --refine-snr`` measures its cost). A fit that
fails keeps the CAE's row and is flagged; so does one that ends without errors (a singular
Hessian).

The fit needs what the CAE does not: the noise model per pixel. It is the model's
training one, with the sky level taken from the stamp's measured ``noise_sigma``
(``sigma² = sky / gain + (read_noise / gain)²``) and the PSF from the stamp's conditions.

The fit's errors (the inverse Hessian at its estimate) are not exactly
its scatter: a model shipped with a ``refine_calibration`` (:func:`calibrate_fit_errors`,
fitted on refined held-out simulations) rescales them as the variance head's are, per bin
of error and of S/N, with a tail factor for the 95% interval per bin of error.
"""

from __future__ import annotations

import numpy as np

from .conditions import stamp_noise_sigma, stamp_snr
from .config import SimConfig, from_dict
from .crb import FIT_PARAMETERS
from .batchfit import fit_batch
from .fit import MAX_NFEV as STOPPED, OK, initial_guess
from .params import ellipticity_errors, ellipticity_from_shear
from .simulate import make_psf
from .uncertainty import LEVELS, VarianceCalibration, half_widths

#: Levenberg-Marquardt steps at most (most stamps converge in fewer).
MAX_STEPS = 20
#: Stamps fitted together: memory of about 2 MB per stamp for its Jacobian's transforms.
BATCH = 64


def training_config(meta: dict) -> SimConfig:
    """The simulation a model was trained on: stamp, pixel scale, PSF model and noise model."""
    return from_dict(SimConfig, meta["dataset"]["simulate"], "simulate.")


def stamp_config(sim: SimConfig, conditions: dict, i: int) -> SimConfig:
    """``sim`` with stamp ``i``'s seeing and the sky level that gives its measured noise."""
    row = {k: float(conditions[k][i]) for k in ("psf_fwhm", "psf_beta") if k in conditions}
    if "noise_sigma" in conditions:
        noise = sim.noise
        row["sky_level"] = max(noise.gain * (conditions["noise_sigma"][i] ** 2
                                             - (noise.read_noise / noise.gain) ** 2), 0.0)
    return sim.for_galaxy(row) if row or sim.varies_conditions else sim


def default_refine_snr(meta: dict) -> float | None:
    """The S/N a model's refined errors were recalibrated above (``tools/ship_model.py
    --refine-snr S --refine-calibration N``), which ``galcae infer`` refines above unless
    told otherwise; None for a model shipped without that calibration."""
    if "refine_calibration" not in meta:
        return None
    return float(meta["refine_calibration_set"]["min_snr"])


def fit_error_calibration(meta: dict) -> VarianceCalibration | None:
    """The recalibration of refined rows' errors a model was shipped with, if any."""
    data = meta.get("refine_calibration")
    return None if data is None else VarianceCalibration.from_dict(data)


def refine(sim: SimConfig, images: np.ndarray, conditions: dict, estimates: dict,
           min_snr: float, max_steps: int = MAX_STEPS,
           calibration: VarianceCalibration | None = None) -> dict[str, np.ndarray]:
    """Re-measure the stamps with :func:`stamp_snr` >= ``min_snr`` by the classical fit.

    ``conditions``: where the model's PSF varies, ``psf_fwhm`` and ``psf_beta`` (scalars or per
    stamp); ``noise_sigma`` per stamp, measured on the stamps unless given. ``estimates``: the CAE's
    columns (``<name>``, ``<name>_err``, ``<name>_lo95``, ``<name>_hi95``, as
    :func:`galcae.infer.measure` returns them), updated in place where a fit succeeds, with
    its errors recalibrated by ``calibration`` (:func:`fit_error_calibration`) if given.
    Returns ``snr``, ``refined`` (the fit replaced the CAE's values) and ``refine_failed``
    (a fit was tried and failed).
    """
    from threadpoolctl import threadpool_limits

    n = len(images)
    conditions = {k: np.broadcast_to(np.asarray(v, float), (n,)) for k, v in conditions.items()}
    noise = conditions["noise_sigma"] if "noise_sigma" in conditions else stamp_noise_sigma(images)
    out = {"snr": stamp_snr(images, noise, sim.noise.gain), "refined": np.zeros(n, bool),
           "refine_failed": np.zeros(n, bool)}
    conditions = {**conditions, "noise_sigma": noise}
    supervised = [name for name in FIT_PARAMETERS if name in estimates]
    chosen = [i for i in np.flatnonzero(out["snr"] >= min_snr)
              if np.all(np.isfinite([estimates[name][i] for name in supervised]))]
    for first in range(0, len(chosen), BATCH):
        rows = np.array(chosen[first:first + BATCH])
        configs = [stamp_config(sim, conditions, i) for i in rows]
        start = {name: np.asarray(estimates[name], float)[rows] for name in supervised}
        if len(start) < len(FIT_PARAMETERS):  # a model that does not predict them all
            with threadpool_limits(1):
                moments = [initial_guess(images[i], c, make_psf(c)) for i, c in zip(rows, configs)]
            start = {name: start.get(name, np.array([m[name] for m in moments])) for name in FIT_PARAMETERS}
        fit = fit_batch(images[rows], sim, {"psf_fwhm": [c.psf.fwhm for c in configs],
                                            "psf_beta": [c.psf.beta for c in configs],
                                            "sky_level": [c.noise.sky_level for c in configs]},
                        start, max_steps=max_steps)
        # Stopped after max_steps keeps its last step; a fit without errors is no measurement.
        done = np.isin(fit["status"], (OK, STOPPED)) & np.all(
            [np.isfinite(fit[f"{name}_err"]) for name in FIT_PARAMETERS], axis=0)
        out["refine_failed"][rows[~done]] = True
        out["refined"][rows[done]] = True
        for name in supervised:
            estimates[name][rows[done]] = fit[name][done]
            if f"{name}_err" in estimates:
                estimates[f"{name}_err"][rows[done]] = fit[f"{name}_err"][done]
    rows = out["refined"]
    if rows.any() and all(f"{name}_err" in estimates for name in supervised):  # values only: no errors
        err = np.stack([estimates[f"{name}_err"][rows] for name in supervised], 1)
        tail = 1.0  # Gaussian errors in physical units, unless recalibrated
        if calibration is not None:
            err = calibration.apply(err, out["snr"][rows])
            tail = calibration.tail(err)
        wide = half_widths(err, tail)[LEVELS[1]]
        for k, name in enumerate(supervised):
            value = estimates[name][rows]
            estimates[f"{name}_err"][rows] = err[:, k]
            if f"{name}_lo95" in estimates:
                estimates[f"{name}_lo95"][rows], estimates[f"{name}_hi95"][rows] = value - wide[:, k], value + wide[:, k]
    if "ellipticity_err" in estimates:
        e, pa = ellipticity_from_shear(estimates["g1"], estimates["g2"])
        e_err, pa_err = ellipticity_errors(estimates["g1"], estimates["g2"], estimates["g1_err"],
                                           estimates["g2_err"])
        for key, value in (("ellipticity", e), ("position_angle", pa), ("ellipticity_err", e_err),
                           ("position_angle_err", pa_err)):
            estimates[key] = np.where(out["refined"], value, estimates[key])
    return out


def refine_blocks(sim: SimConfig, images: np.ndarray, conditions: dict, estimates: dict, min_snr: float,
                  workers: int = 1, block: int = 16, calibration: VarianceCalibration | None = None,
                  max_steps: int = MAX_STEPS) -> tuple[dict, dict, float]:
    """:func:`refine` of a copy of ``estimates``, in blocks on a local cluster of ``workers``
    processes; returns the refined columns, :func:`refine`'s output and the summed seconds
    of the blocks (the single-core cost)."""
    from .distributed import map_ordered

    n = len(images)
    conditions = {k: np.broadcast_to(np.asarray(v, float), (n,)) for k, v in conditions.items()}
    blocks = [(sim, images[i:i + block], {k: v[i:i + block] for k, v in conditions.items()},
               {k: v[i:i + block].copy() for k, v in estimates.items()}, min_snr, calibration, max_steps)
              for i in range(0, n, block)]
    results = map_ordered(_timed_refine, blocks, workers, desc="refinement",
                          unit_scale=[len(b[1]) for b in blocks])
    refined = {k: np.concatenate([r[0][k] for r in results]) for k in estimates}
    done = {k: np.concatenate([r[1][k] for r in results]) for k in results[0][1]}
    return refined, done, float(sum(r[2] for r in results))


def _timed_refine(sim, images, conditions, estimates, min_snr, calibration, max_steps):
    import time

    start = time.perf_counter()
    done = refine(sim, images, conditions, estimates, min_snr, max_steps, calibration)
    return estimates, done, time.perf_counter() - start


def calibrate_fit_errors(sim: SimConfig, images: np.ndarray, conditions: dict, estimates: dict,
                         truth: dict, min_snr: float, workers: int = 1, per_bin: int = 300
                         ) -> tuple[VarianceCalibration, int]:
    """Refine held-out simulated stamps (``estimates``: the CAE's, ``truth``: their
    parameters) and fit the recalibration of the fit's errors on the refined ones (in
    physical units); returns it and the number refined."""
    refined, done, _ = refine_blocks(sim, images, conditions, estimates, min_snr, workers)
    rows = done["refined"]
    names = [name for name in FIT_PARAMETERS if name in estimates]

    def column(table: dict, suffix: str = "") -> np.ndarray:
        return np.stack([table[name + suffix][rows] for name in names], 1)

    return VarianceCalibration.fit(column(truth), column(refined), column(refined, "_err"),
                                   done["snr"][rows], per_bin), int(rows.sum())
