"""The classical maximum-likelihood Sérsic fit, many stamps at once, in PyTorch.

The same fit as :func:`galcae.estimate.fit.fit_stamp` (the PSF-convolved Sérsic model, chi² with
the per-pixel variance of the noise model at the starting point, the same bounds and
Hessian errors), with the model drawn by :class:`galcae.render.SersicRenderer` instead of
GalSim and minimised by Levenberg-Marquardt on a whole batch of stamps: the Jacobian comes
in closed form with the rendering, where the scipy fit renders each stamp eight times per
step with GalSim. Flux, radius and n are fitted in the log (positive by construction); a
step is projected into the bounds.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..config import SimConfig
from ..params import FAILED, FIT_PARAMETERS, MAX_NFEV, OK
from ..physics import pixel_variance, psf_rows
from ..render import FITTED, SersicRenderer
from .fit import bounds

#: Fitted in the log (positive, and steps relative), as the renderer's derivatives are.
LOG_FITTED = tuple(name.removeprefix("log_") for name in FITTED if name.startswith("log_"))


def fit_batch(images: np.ndarray, cfg: SimConfig, conditions: dict, guess: dict,
              max_steps: int = 20, tolerance: float = 0.01, psf: np.ndarray | None = None,
              mask: np.ndarray | None = None, models: bool = False) -> dict[str, np.ndarray]:
    """Fit ``(N, H, W)`` sky-subtracted ADU stamps from ``guess`` (one array per
    :data:`FIT_PARAMETERS`, e.g. the CAE's estimates; clipped into the bounds).

    ``conditions``: per-stamp ``psf_fwhm``, ``psf_beta`` (for ``cfg``'s Moffat PSF) and
    ``sky_level`` (ADU; with ``cfg``'s gain and read noise, the noise model), arrays or
    scalars. ``psf``: PSF images (one ``(p, p)`` for all or ``(N, p, p)``, unit sum, the
    pixel included), which the model is then drawn through instead of the Moffat (as
    ``galsim.InterpolatedImage`` draws them; ``psf_fwhm`` and ``psf_beta`` are not needed).
    ``mask``: ``(N, H, W)`` bool, pixels that carry no weight (neighbours, bad pixels); they
    count in no chi² and no degree of freedom.
    Returns the fitted values, ``<name>_err`` (from the inverse of ``J^T J``; NaN
    where it is singular), ``status`` (``ok`` when a step lowered chi² by less than
    ``tolerance`` or the Gauss-Newton model has less than that left to gain, ``max_nfev``
    after ``max_steps`` steps, ``failed: ...`` for a blank or
    non-finite stamp or guess), ``chi2_dof`` (over the whole stamp, as the scipy fit's) and
    the misfit where the galaxy is (:func:`galaxy_chi2`): ``galaxy_chi2_dof`` and its
    expected scatter ``galaxy_chi2_sd``, one array each; with ``models``, also ``model``: the
    fitted model images, ``(N, H, W)`` (zero where the stamp could not be fitted).

    Each stamp is drawn on the smallest FFT grid of :data:`GRIDS` that its galaxy's extent
    allows (:func:`smallest_grids`, at the guess); one the fit made larger than its grid
    allows is fitted again on the full grid, from there.
    """
    n = len(images)
    conditions = {k: np.broadcast_to(np.asarray(v, float), (n,)) for k, v in conditions.items()}
    guess = {k: np.broadcast_to(np.asarray(guess[k], float), (n,)) for k in FIT_PARAMETERS}

    def part(rows: np.ndarray, start: dict, pad: float) -> dict:
        return _fit(images[rows], cfg, {k: v[rows] for k, v in conditions.items()},
                    {k: v[rows] for k, v in start.items()}, max_steps, tolerance,
                    psf_rows(psf, rows), pad, None if mask is None else mask[rows], models)

    image_psf = psf is not None
    pads = smallest_grids(cfg, conditions, guess, image_psf)
    out = {}
    for pad in np.unique(pads):
        _put(out, np.flatnonzero(pads == pad), n, part(np.flatnonzero(pads == pad), guess, float(pad)))
    # A galaxy that the fit made larger than its grid allows is fitted again on the full grid.
    fitted = {k: out[k] for k in FIT_PARAMETERS}
    measured = np.all([np.isfinite(v) for v in fitted.values()], axis=0)  # failed rows stay failed
    redo = np.flatnonzero(measured & (pads < FULL_GRID) & (smallest_grids(cfg, conditions, fitted, image_psf) > pads))
    if len(redo):
        _put(out, redo, n, part(redo, fitted, FULL_GRID))
    return out



def derivatives_at(cfg: SimConfig, conditions: dict, values: dict, psf: np.ndarray | None = None,
                   mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(derivatives, weight)`` of the models at physical ``values`` (one array per
    :data:`FIT_PARAMETERS`), as :func:`fit_batch` weighs them: ``(N, 7, H, W)`` derivatives
    with respect to the fitted coordinates (:data:`~galcae.render.FITTED`: log flux, log
    radius, log n, g1, g2, x, y) and ``(N, H, W)`` inverse noise sigmas (0 where ``mask``ed).
    The pieces of a Fisher matrix: ``J = derivatives * weight``, ``F = J J^T``."""
    n = len(values["flux"])
    derivatives = np.zeros((n, len(FITTED), cfg.stamp_size, cfg.stamp_size), np.float32)
    weight = np.zeros((n, cfg.stamp_size, cfg.stamp_size), np.float32)
    for rows, problem, phi in _problems_at(cfg, conditions, values, psf, mask):
        with torch.no_grad():
            image, drawn = problem.model(phi, torch.arange(len(rows)), derivatives=True)
            variance = pixel_variance(image, problem.sky_level[:, None, None], cfg.noise.gain, cfg.noise.read_noise)
        derivatives[rows], weight[rows] = drawn.numpy(), (variance.rsqrt() * problem.keep).numpy()
    return derivatives, weight


def models_at(cfg: SimConfig, conditions: dict, values: dict, psf: np.ndarray | None = None) -> np.ndarray:
    """``(N, H, W)`` noiseless model images at physical ``values`` (one array per
    :data:`FIT_PARAMETERS`), drawn as :func:`fit_batch` draws them (its grids and PSFs)."""
    out = np.zeros((len(values["flux"]), cfg.stamp_size, cfg.stamp_size), np.float32)
    for rows, problem, phi in _problems_at(cfg, conditions, values, psf, None):
        with torch.no_grad():
            out[rows] = problem.model(phi, torch.arange(len(rows))).numpy()
    return out


def _problems_at(cfg: SimConfig, conditions: dict, values: dict, psf, mask):
    """``(rows, problem, phi)`` for each FFT grid of the stamps at ``values``: their renderer
    and conditions (:class:`_Problem`, with blank data) and their fitted coordinates."""
    n = len(values["flux"])
    conditions = {k: np.broadcast_to(np.asarray(v, float), (n,)) for k, v in conditions.items()}
    pads = smallest_grids(cfg, conditions, values, psf is not None)
    for pad in np.unique(pads):
        rows = np.flatnonzero(pads == pad)
        problem = _Problem(np.ones((len(rows), cfg.stamp_size, cfg.stamp_size), np.float32), cfg,
                           {k: v[rows] for k, v in conditions.items()}, psf_rows(psf, rows), float(pad),
                           None if mask is None else mask[rows])
        phi = _to_fitted(torch.as_tensor(np.stack([np.asarray(values[k], float)[rows] for k in FIT_PARAMETERS], 1),
                                         dtype=torch.float32))
        yield rows, problem, phi


#: The FFT grids the fit draws on, in stamps per side: the smallest whose wrap-around keeps
#: a stamp's model within :data:`WRAP_TOLERANCE` of the full grid's (the renderer's
#: default, 4), in units of its noise (``sqrt(sum(diff² / variance))``, as
#: :func:`wrap_errors` bounds it). The arithmetic goes as the grid's area: a compact survey
#: galaxy fits on one stamp, at a sixteenth of the full grid's; a 1″, n = 4 galaxy of
#: 3e5 ADU on a dark sky needs three.
GRIDS, FULL_GRID = (1, 1.25, 1.5, 2, 2.5, 3, 4), 4
WRAP_TOLERANCE = 0.1


def smallest_grids(cfg: SimConfig, conditions: dict, values: dict, image_psf: bool) -> np.ndarray:
    """Each stamp's smallest grid of :data:`GRIDS` within :data:`WRAP_TOLERANCE` at ``values``
    (the full grid where a value is not finite)."""
    pads = np.full(len(values["flux"]), float(FULL_GRID))
    for pad in sorted(GRIDS[:-1], reverse=True):
        with np.errstate(invalid="ignore"):
            pads[wrap_errors(cfg, conditions, values, image_psf, pad) <= WRAP_TOLERANCE] = pad
    return pads


def wrap_errors(cfg: SimConfig, conditions: dict, values: dict, image_psf: bool, pad: float) -> np.ndarray:
    """A bound on what drawing each stamp on a grid of ``pad`` stamps (instead of a much larger
    one) adds to its model, in units of its noise: the light the grid wraps onto the stamp
    comes from at least ``d = (pad - 1/2) stamp - offset - 1`` pixels from the galaxy
    (``offset``: its centre's from the stamp's along x or y, the larger; 3 where ``values``
    has no ``x`` and ``y``), where the Sérsic (along its major axis) plus, for a Moffat, the
    PSF's wing are at most ``I(d)`` per pixel; eight images of it on ``stamp²`` pixels give
    ``stamp sqrt(8) I(d) / sigma_sky``. Above 1″ it bounds the drawn difference (0.97 of it
    at worst over n 1-5, |g| 0-0.6, β 2-5); for smaller galaxies the difference is the
    renderer's own interpolation, the same on every grid. A PSF image (at most a stamp wide)
    must not wrap onto the stamp itself: infinite where ``d`` is under half a stamp."""
    from scipy.special import gamma, gammaincinv

    from ..physics import sky_sigma

    size, scale = cfg.stamp_size, cfg.pixel_scale
    flux, r_half, n = (np.asarray(values[k], float) for k in ("flux", "half_light_radius", "sersic_n"))
    offset = (np.maximum(np.abs(np.asarray(values["x"], float) - size / 2),
                         np.abs(np.asarray(values["y"], float) - size / 2))
              if "x" in values and "y" in values else np.full(flux.shape, 3.0))
    d_pixels = (pad - 0.5) * size - offset - 1
    d = d_pixels * scale
    g = np.minimum(np.hypot(values["g1"], values["g2"]), 0.95)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        b = gammaincinv(2 * n, 0.5)
        major = r_half * np.sqrt((1 + g) / (1 - g))
        surface = flux / (2 * np.pi * n * r_half ** 2 * np.exp(b) * b ** (-2 * n) * gamma(2 * n))
        wing = surface * np.exp(-b * ((d / major) ** (1 / n) - 1))
        if not image_psf and cfg.psf.profile == "moffat":
            fwhm, beta = (np.asarray(conditions[k], float) for k in ("psf_fwhm", "psf_beta"))
            alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
            wing = wing + flux * (beta - 1) / (np.pi * alpha ** 2) * (1 + (d / alpha) ** 2) ** (-beta)
        if image_psf:
            wing = np.where(d_pixels >= size / 2, wing, np.inf)
        sigma = sky_sigma(np.asarray(conditions["sky_level"], float), cfg.noise.gain, cfg.noise.read_noise)
        return np.where(np.isfinite(wing) & (d_pixels > 0), size * np.sqrt(8) * wing * scale ** 2 / sigma, np.inf)


def _put(out: dict, rows: np.ndarray, n: int, part: dict) -> None:
    """Write a fit of the stamps ``rows`` into ``out``, the batch's table of ``n`` rows."""
    for key, value in part.items():
        if key not in out:
            out[key] = (np.full((n, *value.shape[1:]), np.nan, value.dtype) if value.dtype != object
                        else np.empty(n, object))
        out[key][rows] = value


def _fit(images: np.ndarray, cfg: SimConfig, conditions: dict, guess: dict, max_steps: int, tolerance: float,
         psf: np.ndarray | None, pad: float, mask: np.ndarray | None = None, models: bool = False
         ) -> dict[str, np.ndarray]:
    """:func:`fit_batch` of stamps drawn on a grid of ``pad`` stamps per side."""
    n = len(images)
    with torch.no_grad():
        problem = _Problem(images, cfg, conditions, psf, pad, mask)
        start = torch.as_tensor(np.stack([np.broadcast_to(np.asarray(guess[k], float), (n,))
                                          for k in FIT_PARAMETERS], 1), dtype=torch.float32)
        usable = problem.usable & torch.isfinite(start).all(1)
        lower, upper = (_to_fitted(torch.as_tensor(b, dtype=torch.float32).clamp(-1e30, 1e30)[None])[0]
                        for b in bounds(cfg))
        phi = _to_fitted(torch.where(torch.isfinite(start), start, 1.0)).clamp(lower + 1e-6, upper - 1e-6)
        state = problem.start(phi)
        converged = _levenberg_marquardt(problem, phi, state, (lower, upper), torch.arange(n)[usable],
                                         max_steps, tolerance)
        phi_err = _errors(state.hessian)
        chi2, model = state.chi2, state.model
        residual, model_snr = (problem.data - model) * problem.weight, model * problem.weight
    out = _table(phi, phi_err, chi2, converged, usable.numpy(), problem.keep.flatten(1).sum(1).numpy())
    out["galaxy_chi2_dof"], out["galaxy_chi2_sd"] = galaxy_chi2(residual.numpy(), model_snr.numpy(),
                                                                problem.keep.numpy() > 0)
    out["galaxy_chi2_dof"][~usable.numpy()] = np.nan
    if models:
        out["model"] = np.where(usable.numpy()[:, None, None], model.numpy(), np.float32(0))
    return out


#: The galaxy's pixels, where a fit's misfit is judged: where the fitted model is at least
#: this many noise sigma (at least :data:`MIN_GALAXY_PIXELS` of them, the brightest).
GALAXY_SIGMA = 0.5
MIN_GALAXY_PIXELS = 9
#: The median of chi² with one degree of freedom, and chi²(1)'s density there.
CHI2_1_MEDIAN, CHI2_1_DENSITY_AT_MEDIAN = 0.4549, 0.4711


def galaxy_chi2(residual: np.ndarray, model_snr: np.ndarray, keep: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(chi2_dof, sd)`` of ``(N, H, W)`` residuals in noise sigma over the galaxy's pixels
    (the model's ``model_snr`` per pixel >= :data:`GALAXY_SIGMA`), in units of the stamp's
    other pixels' own: their robust mean squared residual (the median over 0.455, that of
    chi² with one degree of freedom). So an error in the noise level (the border's noise
    measured a few per cent high, say) cancels, and a misfit of the galaxy shows, diluted
    neither by the empty sky nor hidden by a neighbour in it. ``sd``: its standard deviation
    for a galaxy the model fits, ``sqrt(2 / dof + 5.44 / sky_pixels)`` (the second term, the
    median's own noise: 0.04 for a 64 x 64 stamp). ``keep``: the pixels that count (bool, the
    shape of ``residual``; default all)."""
    n = len(residual)
    chi = residual.reshape(n, -1).astype(np.float64) ** 2
    kept = np.ones(chi.shape, bool) if keep is None else keep.reshape(n, -1)
    snr = np.where(kept, model_snr.reshape(n, -1), -np.inf)
    threshold = np.minimum(GALAXY_SIGMA, -np.sort(-snr, axis=1)[:, MIN_GALAXY_PIXELS - 1])
    galaxy = kept & (snr >= threshold[:, None])
    sky = kept & ~galaxy
    with warnings.catch_warnings():  # a stamp without sky pixels: NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        sky_level = np.nanmedian(np.where(sky, chi, np.nan), axis=1) / CHI2_1_MEDIAN
    dof = np.fmax(galaxy.sum(axis=1) - len(FIT_PARAMETERS), 1)
    sky_pixels = np.fmax(sky.sum(axis=1), 1)
    chi2_dof = np.where(galaxy, chi, 0.0).sum(axis=1) / np.fmax(sky_level, 1e-12) / dof
    # The variance of a sample median is 1 / (4 n f(m)^2), f(m) the density at the median.
    median_variance = 1 / (4 * (CHI2_1_DENSITY_AT_MEDIAN * CHI2_1_MEDIAN) ** 2)
    return chi2_dof, np.sqrt(2 / dof + median_variance / sky_pixels)


class _Problem:
    """The data, noise model and renderer of a batch fit: chi² of fitted coordinates ``phi``."""

    def __init__(self, images: np.ndarray, cfg: SimConfig, conditions: dict, psf: np.ndarray | None = None,
                 pad: float = 4, mask: np.ndarray | None = None):
        n = len(images)
        data = torch.as_tensor(np.asarray(images, np.float32))
        # 1 where a pixel counts, 0 where it is masked: its weight, and so its residual, is 0.
        self.keep = (torch.ones(data.shape) if mask is None
                     else torch.as_tensor(~np.asarray(mask, bool), dtype=torch.float32))
        data = torch.where(self.keep > 0, data, 0.0)  # what is under the mask (NaN, say) never counts
        self.usable = torch.isfinite(data).flatten(1).all(1) & (data.flatten(1) != 0).any(1)
        self.data = torch.where(self.usable[:, None, None], data, 0.0)
        names = (("sky_level",) + (() if psf is not None else ("psf_fwhm",))
                 + (("psf_beta",) if cfg.psf.profile == "moffat" and psf is None else ()))
        given = {k: torch.as_tensor(np.broadcast_to(np.asarray(conditions[k], float), (n,)).copy(),
                                    dtype=torch.float32) for k in names}
        self.sky_level = given["sky_level"]
        self.renderer = SersicRenderer(cfg.stamp_size, cfg.pixel_scale, pad=pad)
        # Each distinct PSF's transform, made once (not looked up again at every step), and
        # which one each stamp has: the PSF image's, or the Moffat's.
        self.psf = _transforms(self.renderer, psf, n) if psf is not None else _moffat_transforms(self.renderer, given)
        self.noise = cfg.noise
        self.weight = None

    def model(self, phi: torch.Tensor, rows: torch.Tensor, derivatives: bool = False):
        values = _from_fitted(phi)
        params = {k: values[:, i] for i, k in enumerate(FIT_PARAMETERS)}
        distinct, which = self.psf
        params["psf_k"] = distinct[which[rows]]
        return self.renderer.with_derivatives(params) if derivatives else self.renderer(params)

    def start(self, phi: torch.Tensor) -> "_State":
        """Draw every stamp at ``phi`` with its derivatives: the weights (the variance at the
        starting model, fixed per pixel, as the scipy fit's) and the fit's first state."""
        rows = torch.arange(len(phi))
        image, derivatives = self.model(phi, rows, derivatives=True)
        variance = pixel_variance(image, self.sky_level[:, None, None], self.noise.gain, self.noise.read_noise)
        self.weight = variance.rsqrt() * self.keep
        state = _State(image, self.chi2(image, rows), torch.empty(len(phi), len(FITTED), len(FITTED)),
                       torch.empty(len(phi), len(FITTED)))
        self.normal_equations(state, rows, image, derivatives)
        return state

    def chi2(self, image: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return ((self.data[rows] - image) * self.weight[rows]).square().flatten(1).sum(1)

    def normal_equations(self, state: "_State", rows: torch.Tensor, image: torch.Tensor,
                         derivatives: torch.Tensor) -> None:
        """``state``'s ``J^T J`` and ``J^T r`` of the stamps ``rows`` from their model ``image``
        and its ``derivatives`` (J: of the weighted residuals' model part)."""
        weight = self.weight[rows]
        jac = (derivatives * weight[:, None]).flatten(2)  # (N, 7, pixels)
        residual = ((self.data[rows] - image) * weight).flatten(1)
        state.hessian[rows] = jac @ jac.transpose(1, 2)
        state.gradient[rows] = (jac @ residual[:, :, None])[:, :, 0]


@dataclass
class _State:
    """Where a batch fit stands: each stamp's model image and chi² at its current values, and
    the normal equations (``J^T J``, ``J^T r``) there."""

    model: torch.Tensor
    chi2: torch.Tensor
    hessian: torch.Tensor
    gradient: torch.Tensor


def _transforms(renderer: SersicRenderer, psf: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(distinct, which)``: the transforms of the distinct PSF images, and each stamp's."""
    planes = np.asarray(psf, np.float64)
    planes = np.broadcast_to(planes, (n, *planes.shape)) if planes.ndim == 2 else planes
    keys, which = np.unique(planes.reshape(n, -1), axis=0, return_inverse=True)
    distinct = torch.stack([renderer.psf_transform(k.reshape(planes.shape[1:])) for k in keys])
    return distinct, torch.as_tensor(which.reshape(-1))


def _moffat_transforms(renderer: SersicRenderer, given: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(distinct, which)``: the transform of each distinct PSF of ``given`` (``psf_fwhm``,
    and ``psf_beta`` for a Moffat) and each stamp's index into them. Stamps told one PSF
    (a cube measured with ``--psf-fwhm``) share one transform instead of one each."""
    keys = torch.stack([given[k] for k in ("psf_fwhm", "psf_beta") if k in given], 1)
    unique, which = torch.unique(keys, dim=0, return_inverse=True)
    beta = unique[:, 1] if unique.shape[1] > 1 else None
    return renderer.psf_spectrum({"psf_fwhm": unique[:, 0], "psf_beta": beta}), which


def _levenberg_marquardt(problem: _Problem, phi: torch.Tensor, state: _State, limits, active: torch.Tensor,
                         max_steps: int, tolerance: float) -> torch.Tensor:
    """Damped Gauss-Newton steps of the ``active`` stamps, ``phi`` and ``state`` updated in
    place; returns which stamps converged. A step is drawn with its derivatives: from the
    CAE's start most steps are accepted, and drawing the image alone, then the derivatives
    again where accepted, took 1.12 times as long (a rejected step's stamp retries from the
    same normal equations with more damping)."""
    lower, upper = limits
    damping = torch.full((len(phi),), 1e-3)
    converged = torch.zeros(len(phi), dtype=torch.bool)
    for _ in range(max_steps):
        if not len(active):
            break
        # The Gauss-Newton decrement g^T H^-1 g: the chi² still to gain, by the model's own
        # quadratic. Below ``tolerance`` the stamp is converged where it stands (no step of
        # it can move it by more than about sqrt(tolerance) sigma).
        newton, singular = torch.linalg.solve_ex(state.hessian[active], state.gradient[active, :, None])
        at_minimum = (singular == 0) & ((state.gradient[active] * newton[:, :, 0]).sum(1) < tolerance)
        converged[active[at_minimum]] = True
        active = active[~at_minimum]
        if not len(active):
            break
        hessian, gradient = state.hessian[active], state.gradient[active]
        diagonal = torch.diag_embed(torch.diagonal(hessian, dim1=1, dim2=2).clamp_min(1e-12))
        step = torch.linalg.solve(hessian + damping[active, None, None] * diagonal,
                                  gradient[:, :, None])[:, :, 0]
        trial = (phi[active] + step).clamp(lower, upper)
        image, derivatives = problem.model(trial, active, derivatives=True)
        trial_chi2 = problem.chi2(image, active)
        better = trial_chi2 < state.chi2[active]
        gain = state.chi2[active] - trial_chi2
        phi[active] = torch.where(better[:, None], trial, phi[active])
        state.chi2[active] = torch.where(better, trial_chi2, state.chi2[active])
        state.model[active] = torch.where(better[:, None, None], image, state.model[active])
        damping[active] = torch.where(better, damping[active] / 3, damping[active] * 4).clamp(1e-7, 1e7)
        # Also converged: a step that gains less than ``tolerance`` in chi² (of 1 for 1
        # sigma; float32 chi² of a few thousand cannot resolve less). Where the step was
        # accepted, its derivatives are the normal equations: to go on from there or, for a
        # converged stamp, for its errors.
        done = better & (gain < tolerance)
        converged[active[done]] = True
        moved = active[better]
        if len(moved):
            problem.normal_equations(state, moved, image[better], derivatives[better])
        active = active[~done]
    return converged


def _errors(hessian: torch.Tensor) -> torch.Tensor:
    """1-sigma of the fitted coordinates from the inverse of ``J^T J`` (NaN where singular)."""
    cov, singular = torch.linalg.inv_ex(hessian.double())
    diagonal = torch.diagonal(cov, dim1=1, dim2=2)
    # A parameter the stamp does not constrain (e.g. a flux driven to zero) has no error.
    return torch.where((singular[:, None] == 0) & (diagonal > 0), diagonal.clamp_min(0).sqrt(), torch.nan)


def _table(phi, phi_err, chi2, converged, usable: np.ndarray, n_pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Values, errors, status and chi²/dof in physical units; NaN rows for unusable stamps."""
    values = _from_fitted(phi).double().numpy()
    out = {k: values[:, i] for i, k in enumerate(FIT_PARAMETERS)}
    for i, k in enumerate(FIT_PARAMETERS):  # d value = value d log(value) for the log-fitted
        scale = values[:, i] if k in LOG_FITTED else 1.0
        out[f"{k}_err"] = phi_err[:, i].double().numpy() * scale
    out["status"] = np.where(converged.numpy(), OK, MAX_NFEV).astype(object)
    out["chi2_dof"] = chi2.double().numpy() / np.fmax(1, n_pixels - len(FIT_PARAMETERS))
    bad = ~usable
    for k in FIT_PARAMETERS:
        out[k][bad], out[f"{k}_err"][bad] = np.nan, np.nan
    out["status"][bad] = f"{FAILED}: empty or non-finite stamp or guess"
    out["chi2_dof"][bad] = np.nan
    return out


def _to_fitted(values: torch.Tensor) -> torch.Tensor:
    """Physical ``(N, 7)`` -> the fitted coordinates (log of flux, radius and n)."""
    out = values.clone()
    for i, k in enumerate(FIT_PARAMETERS):
        if k in LOG_FITTED:
            out[:, i] = torch.log(values[:, i].clamp_min(1e-30))
    return out


def _from_fitted(phi: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.exp(phi[:, i]) if k in LOG_FITTED else phi[:, i]
                        for i, k in enumerate(FIT_PARAMETERS)], dim=1)
