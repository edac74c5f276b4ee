"""Refinement: the classical fit, started at the CAE's estimate, for the bright galaxies
(``galcae infer --refine-snr S``; by default above the S/N of the model card's refinement
policy, :class:`galcae.card.Refinement`, for a model shipped with a refine calibration).

The CAE's scatter shrinks more slowly with S/N than the Cramér–Rao bound: above S/N 100
it is about twice the bound (docs/model-survey.md), while a maximum-likelihood fit
reaches the bound there but costs far more than the CAE, and does worse than the CAE on
faint ones (it fails, or wanders). So the CAE measures every stamp, the stamp's S/N picks
the bright ones, and only those are fitted, starting from the CAE's values: their catalog
values and errors become the fit's (the inverse Hessian, which is the bound at high S/N).
The fit is :func:`galcae.estimate.batchfit.fit_batch`, the likelihood of the scipy + GalSim fit of
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

Errors when the model does not fit. The Hessian's errors hold only for a single Sérsic
galaxy seen through the given PSF with the assumed noise. Two terms widen them
(:func:`widen_for_model_error`), after the calibration and before the 95% intervals:

- the fit's reduced χ² over the galaxy's pixels, in units of the stamp's other pixels'
  (:func:`galcae.estimate.batchfit.galaxy_chi2`, the catalog's ``chi2_dof``), where above
  1: ``err *= sqrt(chi2_dof)`` (a misfit the data show, such as a wrong PSF); a row whose
  ``chi2_dof`` exceeds 1 by :data:`POOR_FIT_SIGMA` of its standard deviations for a
  galaxy the model fits is flagged ``flag_poor_fit``;
- a model-error floor per parameter from the model card
  (:attr:`galcae.card.Refinement.model_error`), added in quadrature: a fraction of the value
  for flux, half-light radius and n, an absolute one for the others. Galaxies that are not
  single Sérsic profiles (bulge + disk) fit with a χ² barely above a Sérsic galaxy's
  (above S/N 100, a median ``chi2_dof`` of 1.05 against 1.01), so the χ² cannot say which
  galaxies they are; yet their single-Sérsic flux and half-light radius miss the truth by
  a few times the Hessian's error. The floor is what such galaxies need on average
  (docs/model-survey.md gives its calibration).
"""

from __future__ import annotations

import numpy as np

from ..conditions import stamp_noise_sigma
from ..config import ConfigError, SimConfig
from ..params import FIT_PARAMETERS, OK, ellipticity_errors, ellipticity_from_shear
from ..params import MAX_NFEV as STOPPED
from ..physics import make_psf, psf_rows, sky_level_for_sigma, stamp_snr
from ..uncertainty import LEVELS, VarianceCalibration, half_widths
from .batchfit import fit_batch
from .fit import initial_guess
from .neighbours import NeighbourModels, Neighbours, hidden_neighbours, merged, neighbour_light, propagated_covariance

#: Levenberg-Marquardt steps at most (most stamps converge in fewer).
MAX_STEPS = 20
#: Stamps fitted together: about 0.2 MB each for their derivative images (the renderer
#: draws in cache-sized parts), and each of the fit's grids gets enough of them that its
#: batched operations, not Python, take the time (at 64, the pipeline's refinement spent
#: twice as long per stamp as the fit alone on 256).
BATCH = 512
#: A refined fit whose ``chi2_dof`` over the galaxy's pixels exceeds 1 by this many of its
#: standard deviations is flagged ``flag_poor_fit``: above 1.43 for a galaxy of 300 pixels.
POOR_FIT_SIGMA = 5.0
#: Turns of fitting a neighbour found in the galaxy fit's residual and the galaxy again.
HIDDEN_TURNS = 3
#: Turns of fitting the segmentation's neighbours on the data less the galaxy's model, and
#: the galaxy again on the data less theirs.
NEIGHBOUR_TURNS = 2
#: Fitted parameters whose model-error floor is a fraction of the value.
RELATIVE_FLOOR = ("flux", "half_light_radius", "sersic_n")


def stamp_conditions(sim: SimConfig, conditions: dict, rows: np.ndarray, psf_image: bool = False
                     ) -> dict[str, np.ndarray]:
    """``psf_fwhm``, ``psf_beta`` (not with a ``psf_image``) and ``sky_level`` of the stamps
    ``rows``, as the fit takes them: the stamps' own conditions where given (the sky level
    that gives their measured ``noise_sigma``), else the training set's fixed values."""
    def per_stamp(name: str, fixed, key: str) -> np.ndarray:
        if name in conditions:
            return np.asarray(conditions[name], float)[rows]
        if isinstance(fixed, tuple):
            raise ConfigError(f"{key}: varies per galaxy; '{name}' is needed")
        return np.full(len(rows), float(fixed))

    noise = sim.noise
    sky = (sky_level_for_sigma(np.asarray(conditions["noise_sigma"], float)[rows], noise.gain, noise.read_noise)
           if "noise_sigma" in conditions else per_stamp("sky_level", noise.sky_level, "noise.sky_level"))
    if psf_image:
        return {"sky_level": sky}
    return {"psf_fwhm": per_stamp("psf_fwhm", sim.psf.fwhm, "psf.fwhm"),
            "psf_beta": per_stamp("psf_beta", sim.psf.beta, "psf.beta"), "sky_level": sky}


def stamp_config(sim: SimConfig, conditions: dict, i: int) -> SimConfig:
    """``sim`` with stamp ``i``'s seeing and the sky level that gives its measured noise."""
    values = stamp_conditions(sim, conditions, np.array([i]))
    return sim.for_galaxy({k: float(v[0]) for k, v in values.items()})


def refine(sim: SimConfig, images: np.ndarray, conditions: dict, estimates: dict,
           min_snr: float, max_steps: int = MAX_STEPS,
           calibration: VarianceCalibration | None = None, psf: np.ndarray | None = None,
           model_error: dict | None = None, mask: np.ndarray | None = None,
           neighbours: Neighbours | None = None) -> dict[str, np.ndarray]:
    """Re-measure the stamps with :func:`~galcae.physics.stamp_snr` >= ``min_snr`` by the
    classical fit; ``estimates`` is not changed.

    ``conditions``: where the model's PSF varies, ``psf_fwhm`` and ``psf_beta`` (scalars or per
    stamp); ``noise_sigma`` per stamp, measured on the stamps unless given. ``estimates``: the
    CAE's columns (``<name>``, ``<name>_err``, ``<name>_lo95``, ``<name>_hi95``, as
    :func:`galcae.estimate.cae.measure` returns them). ``psf``: the stamps' PSF images (one
    ``(p, p)`` for all, or ``(N, p, p)``), which the fit draws its model through instead of
    the Moffat of ``psf_fwhm`` and ``psf_beta``. ``model_error``: the card's model-error
    floors (:attr:`galcae.card.Refinement.model_error`). ``mask``: ``(N, H, W)`` bool, pixels
    that count neither in the S/N nor in the fit (neighbours, bad pixels). ``neighbours``: the
    other sources the segmentation found (:class:`~galcae.estimate.neighbours.Neighbours`);
    each is modelled and its model subtracted before the galaxy is fitted
    (:func:`~galcae.estimate.neighbours.neighbour_light`). Returns those columns with the fit's
    values and errors where it succeeded (recalibrated by ``calibration``, the model card's
    :attr:`~galcae.card.Refinement.calibration`, if given), plus ``snr``, ``refined`` (the
    fit replaced the CAE's values), ``refine_failed`` (a fit was tried and failed) and
    ``chi2_dof`` (the refined fit's reduced χ² over the galaxy's pixels, in units of the
    stamp's other pixels': :func:`~galcae.estimate.batchfit.galaxy_chi2`; NaN elsewhere),
    ``poor_fit`` (that χ² is :data:`POOR_FIT_SIGMA` sigma above its expectation) and
    ``neighbours_modelled`` (how many neighbours' models were subtracted; 0 where not refined)
    and ``hidden_neighbours`` (of those, how many the segmentation had merged with the galaxy:
    found in the first fit's residual).
    """
    n = len(images)
    conditions = {k: np.broadcast_to(np.asarray(v, float), (n,)) for k, v in conditions.items()}
    if "noise_sigma" not in conditions:
        conditions["noise_sigma"] = stamp_noise_sigma(images)
    supervised = [name for name in FIT_PARAMETERS if name in estimates]
    out = {**estimates, **{k: np.array(estimates[k], copy=True) for k in _refinable(estimates, supervised)},
           "snr": stamp_snr(images, conditions["noise_sigma"], sim.noise.gain, mask),
           "refined": np.zeros(n, bool), "refine_failed": np.zeros(n, bool), "chi2_dof": np.full(n, np.nan),
           "poor_fit": np.zeros(n, bool), "neighbours_modelled": np.zeros(n, np.int64),
           "hidden_neighbours": np.zeros(n, np.int64)}
    chosen = np.flatnonzero((out["snr"] >= min_snr)
                            & np.all([np.isfinite(estimates[name]) for name in supervised], axis=0))
    # The variance the neighbours' subtracted models add to each refined parameter.
    neighbour_variance = np.zeros((n, len(FIT_PARAMETERS)))
    for first in range(0, len(chosen), BATCH):
        _fit_rows(out, chosen[first:first + BATCH], sim, images, conditions, supervised, max_steps, psf, mask,
                  neighbours, neighbour_variance)
    if out["refined"].any() and all(f"{name}_err" in out for name in supervised):
        _recalibrate_errors(out, supervised, calibration, model_error or {},
                            neighbour_variance[:, [FIT_PARAMETERS.index(name) for name in supervised]])
    if "ellipticity_err" in out:
        _shape_from_shear(out)
    return out


def _refinable(estimates: dict, supervised: list[str]) -> list[str]:
    """The columns a refinement may change (copied, so the caller's stay as they were)."""
    names = [*supervised, *(f"{n}{s}" for n in supervised for s in ("_err", "_lo95", "_hi95")),
             "ellipticity", "position_angle", "ellipticity_err", "position_angle_err"]
    return [k for k in names if k in estimates]


def _fit_rows(out: dict, rows: np.ndarray, sim: SimConfig, images: np.ndarray, conditions: dict,
              supervised: list[str], max_steps: int, psf: np.ndarray | None, mask: np.ndarray | None = None,
              neighbours: Neighbours | None = None, neighbour_variance: np.ndarray | None = None) -> None:
    """Fit the stamps ``rows`` from ``out``'s values, their neighbours' models subtracted;
    write the successful fits into ``out`` (and the variance the models add into
    ``neighbour_variance``)."""
    start = {name: out[name][rows] for name in supervised}
    if len(start) < len(FIT_PARAMETERS):  # a model that does not predict them all
        start = _with_moments(start, sim, images, conditions, rows)
    psf = psf_rows(psf, rows)
    given = stamp_conditions(sim, conditions, rows, psf is not None)
    mask = None if mask is None else mask[rows]
    if neighbours is None:
        fit, models = fit_batch(images[rows], sim, given, start, max_steps=max_steps, psf=psf, mask=mask), None
    else:
        fit, models, mask, hidden = _fit_with_neighbours(images[rows], sim, given, start, max_steps, psf, mask,
                                                         neighbours.take(rows), conditions["noise_sigma"][rows])
        out["neighbours_modelled"][rows], out["hidden_neighbours"][rows] = models.count, hidden
    # Stopped after max_steps keeps its last step; a fit without errors is no measurement.
    done = np.isin(fit["status"], (OK, STOPPED)) & np.all(
        [np.isfinite(fit[f"{name}_err"]) for name in FIT_PARAMETERS], axis=0)
    out["refine_failed"][rows[~done]] = True
    out["refined"][rows[done]] = True
    out["chi2_dof"][rows[done]] = fit["galaxy_chi2_dof"][done]
    out["poor_fit"][rows[done]] = fit["galaxy_chi2_dof"][done] > 1 + POOR_FIT_SIGMA * fit["galaxy_chi2_sd"][done]
    for name in supervised:
        out[name][rows[done]] = fit[name][done]
        if f"{name}_err" in out:
            out[f"{name}_err"][rows[done]] = fit[f"{name}_err"][done]
    if models is not None and neighbour_variance is not None and models.count[done].any():
        extra = propagated_covariance(models, {k: np.where(done, fit[k], start[k]) for k in FIT_PARAMETERS},
                                      mask, sim, given, psf)
        neighbour_variance[rows[done]] = np.diagonal(extra, axis1=1, axis2=2)[done]


def _fit_with_neighbours(data: np.ndarray, sim: SimConfig, given: dict, start: dict, max_steps: int,
                         psf: np.ndarray | None, mask: np.ndarray | None, neighbours: Neighbours,
                         noise_sigma: np.ndarray) -> tuple[dict, NeighbourModels, np.ndarray, np.ndarray]:
    """The galaxies' fit with their neighbours' models subtracted (:mod:`.neighbours`); where
    its residual shows a neighbour the segmentation had merged with the galaxy
    (:func:`~galcae.estimate.neighbours.hidden_neighbours`), that one is modelled too, masked,
    and the galaxy fitted again. Returns the fit, all the neighbours modelled, the galaxies'
    masks and how many neighbours each had hidden."""
    models = neighbour_light(data, sim, given, neighbours, psf)
    fit = fit_batch(data - models.light, sim, given, start, max_steps=max_steps, psf=psf, mask=mask, models=True)
    galaxy = np.nan_to_num(fit.pop("model"))
    # The neighbours were fitted with the galaxy's wings still in their pixels, which their
    # models then took from the galaxy: they and the galaxy are fitted in turn, each on the
    # data less the other's model.
    for _ in range(NEIGHBOUR_TURNS if models.count.any() else 0):
        previous = models.count > 0
        models = neighbour_light(data - galaxy, sim, given, neighbours, psf)
        again = np.flatnonzero(previous | (models.count > 0))
        refit = _refit(data - models.light, sim, given, start, max_steps, psf, mask, again)
        galaxy[again] = np.nan_to_num(refit.pop("model"))
        for key, value in refit.items():
            fit[key][again] = value
    data = data - models.light
    fitted = np.isfinite(fit["x"]) & np.isfinite(fit["y"])
    hidden, grown = hidden_neighbours(data - galaxy, noise_sigma, fit["x"], fit["y"], mask, fitted)
    mask = np.zeros(data.shape, bool) if mask is None else mask.copy()
    found = neighbour_light(data - galaxy, sim, given, hidden, psf)
    again = np.flatnonzero(found.count > 0)
    mask[again] |= grown[again]
    # The first fit took some of a hidden neighbour's light: the two are fitted in turn, each
    # on the data less the other's model (a joint fit, by block coordinate descent).
    for turn in range(HIDDEN_TURNS if len(again) else 0):
        if turn:
            found = neighbour_light(data - galaxy, sim, given, hidden, psf)
        refit = _refit(data - found.light, sim, given, start, max_steps, psf, mask, again)
        galaxy[again] = np.nan_to_num(refit.pop("model"))
        for key, value in refit.items():
            fit[key][again] = value
    return fit, merged(models, found), mask, found.count


def _refit(data: np.ndarray, sim: SimConfig, given: dict, start: dict, max_steps: int, psf, mask, rows) -> dict:
    """The galaxy fit (with its model images) of the stamps ``rows`` of ``data`` again, from ``start``."""
    return fit_batch(data[rows], sim, {k: np.broadcast_to(v, (len(data),))[rows] for k, v in given.items()},
                     {k: np.asarray(v)[rows] for k, v in start.items()}, max_steps=max_steps,
                     psf=psf_rows(psf, rows), mask=None if mask is None else mask[rows], models=True)


def _with_moments(start: dict, sim: SimConfig, images, conditions, rows) -> dict:
    """``start`` completed with HSM adaptive moments for the parameters the model lacks."""
    from threadpoolctl import threadpool_limits

    configs = [stamp_config(sim, conditions, i) for i in rows]
    with threadpool_limits(1):
        moments = [initial_guess(images[i], c, make_psf(c)) for i, c in zip(rows, configs)]
    return {name: start.get(name, np.array([m[name] for m in moments])) for name in FIT_PARAMETERS}


def _recalibrate_errors(out: dict, supervised: list[str], calibration: VarianceCalibration | None,
                        model_error: dict, neighbour_variance: np.ndarray) -> None:
    """The refined rows' errors recalibrated (if a calibration is given), widened by the
    neighbours' subtracted models (``neighbour_variance``, ``(N, P)``) and for model error,
    and their 95% intervals."""
    rows = out["refined"]
    err = np.stack([out[f"{name}_err"][rows] for name in supervised], 1)
    tail = 1.0  # Gaussian errors in physical units, unless recalibrated
    if calibration is not None:
        err = calibration.apply(err, out["snr"][rows])
        tail = calibration.tail(err)
    err = np.sqrt(err ** 2 + np.fmax(neighbour_variance[rows], 0.0))
    err = widen_for_model_error(err, np.stack([out[name][rows] for name in supervised], 1),
                                out["chi2_dof"][rows], supervised, model_error)
    wide = half_widths(err, tail)[LEVELS[1]]
    for k, name in enumerate(supervised):
        value = out[name][rows]
        out[f"{name}_err"][rows] = err[:, k]
        if f"{name}_lo95" in out:
            out[f"{name}_lo95"][rows], out[f"{name}_hi95"][rows] = value - wide[:, k], value + wide[:, k]


def widen_for_model_error(err: np.ndarray, values: np.ndarray, chi2_dof: np.ndarray, names: list[str],
                          floors: dict) -> np.ndarray:
    """``(N, P)`` errors of the parameters ``names`` widened by the fit's reduced χ² (where
    above 1) and, in quadrature, by the model-error ``floors``."""
    err = err * np.sqrt(np.fmax(1.0, chi2_dof))[:, None]
    floor = np.array([floors.get(name, 0.0) for name in names])
    relative = np.array([name in RELATIVE_FLOOR for name in names])
    return np.hypot(err, floor * np.where(relative, np.abs(values), 1.0))


def _shape_from_shear(out: dict) -> None:
    """|g| and the position angle (and their errors) of the refined rows, from g1 and g2."""
    e, pa = ellipticity_from_shear(out["g1"], out["g2"])
    e_err, pa_err = ellipticity_errors(out["g1"], out["g2"], out["g1_err"], out["g2_err"])
    for key, value in (("ellipticity", e), ("position_angle", pa), ("ellipticity_err", e_err),
                       ("position_angle_err", pa_err)):
        out[key] = np.where(out["refined"], value, out[key])


def refine_blocks(sim: SimConfig, images: np.ndarray, conditions: dict, estimates: dict, min_snr: float,
                  workers: int = 1, block: int = 16, calibration: VarianceCalibration | None = None,
                  max_steps: int = MAX_STEPS, psf: np.ndarray | None = None,
                  model_error: dict | None = None) -> tuple[dict, dict, float]:
    """:func:`refine` in blocks on a local cluster of ``workers`` processes; returns the
    refined ``estimates`` columns, the ``snr``, ``refined``, ``refine_failed``, ``chi2_dof``
    and ``poor_fit`` columns, and
    the summed seconds of the blocks (the single-core cost)."""
    from ..distributed import map_ordered

    n = len(images)
    conditions = {k: np.broadcast_to(np.asarray(v, float), (n,)) for k, v in conditions.items()}
    blocks = [(sim, images[i:i + block], {k: v[i:i + block] for k, v in conditions.items()},
               {k: v[i:i + block] for k, v in estimates.items()}, min_snr, calibration, max_steps,
               psf_rows(psf, slice(i, i + block)), model_error)
              for i in range(0, n, block)]
    results = map_ordered(_timed_refine, blocks, workers, desc="refinement",
                          unit_scale=[len(b[1]) for b in blocks])
    refined = {k: np.concatenate([r[0][k] for r in results]) for k in estimates}
    done = {k: np.concatenate([r[0][k] for r in results])
            for k in ("snr", "refined", "refine_failed", "chi2_dof", "poor_fit")}
    return refined, done, float(sum(r[1] for r in results))


def _timed_refine(sim, images, conditions, estimates, min_snr, calibration, max_steps, psf, model_error):
    import time

    start = time.perf_counter()
    out = refine(sim, images, conditions, estimates, min_snr, max_steps, calibration, psf, model_error)
    return out, time.perf_counter() - start


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
