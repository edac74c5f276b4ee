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
              max_steps: int = 20, tolerance: float = 0.01, psf: np.ndarray | None = None
              ) -> dict[str, np.ndarray]:
    """Fit ``(N, H, W)`` sky-subtracted ADU stamps from ``guess`` (one array per
    :data:`FIT_PARAMETERS`, e.g. the CAE's estimates; clipped into the bounds).

    ``conditions``: per-stamp ``psf_fwhm``, ``psf_beta`` (for ``cfg``'s Moffat PSF) and
    ``sky_level`` (ADU; with ``cfg``'s gain and read noise, the noise model), arrays or
    scalars. ``psf``: PSF images (one ``(p, p)`` for all or ``(N, p, p)``, unit sum, the
    pixel included), which the model is then drawn through instead of the Moffat (as
    ``galsim.InterpolatedImage`` draws them; ``psf_fwhm`` and ``psf_beta`` are not needed).
    Returns the fitted values, ``<name>_err`` (from the inverse of ``J^T J``; NaN
    where it is singular), ``status`` (``ok`` when a step lowered chi² by less than
    ``tolerance`` or the Gauss-Newton model has less than that left to gain, ``max_nfev``
    after ``max_steps`` steps, ``failed: ...`` for a blank or
    non-finite stamp or guess), ``chi2_dof`` (over the whole stamp, as the scipy fit's) and
    the misfit where the galaxy is (:func:`galaxy_chi2`): ``galaxy_chi2_dof`` and its
    expected scatter ``galaxy_chi2_sd``, one array each.

    Each stamp is drawn on the smallest FFT grid of :data:`GRIDS` that its galaxy's extent
    allows (:func:`smallest_grids`, at the guess); one the fit made larger than its grid
    allows is fitted again on the full grid, from there.
    """
    n = len(images)
    conditions = {k: np.broadcast_to(np.asarray(v, float), (n,)) for k, v in conditions.items()}
    guess = {k: np.broadcast_to(np.asarray(guess[k], float), (n,)) for k in FIT_PARAMETERS}

    def part(rows: np.ndarray, start: dict, pad: int) -> dict:
        return _fit(images[rows], cfg, {k: v[rows] for k, v in conditions.items()},
                    {k: v[rows] for k, v in start.items()}, max_steps, tolerance,
                    psf_rows(psf, rows), pad)

    image_psf = psf is not None
    pads = smallest_grids(cfg, conditions, guess, image_psf)
    out = {}
    for pad in np.unique(pads):
        _put(out, np.flatnonzero(pads == pad), n, part(np.flatnonzero(pads == pad), guess, int(pad)))
    # A galaxy that the fit made larger than its grid allows is fitted again on the full grid.
    fitted = {k: out[k] for k in FIT_PARAMETERS}
    measured = np.all([np.isfinite(v) for v in fitted.values()], axis=0)  # failed rows stay failed
    redo = np.flatnonzero(measured & (pads < FULL_GRID) & (smallest_grids(cfg, conditions, fitted, image_psf) > pads))
    if len(redo):
        _put(out, redo, n, part(redo, fitted, FULL_GRID))
    return out


#: The FFT grids the fit draws on, in stamps per side: the smallest whose wrap-around keeps
#: a stamp's model within :data:`WRAP_TOLERANCE` of the full grid's (the renderer's
#: default, 4), in units of its noise (``sqrt(sum(diff² / variance))``, as
#: :func:`wrap_errors` bounds it). Most survey galaxies fit on two stamps, at a quarter of
#: the arithmetic; a 1″, n = 4 galaxy of 3e5 ADU on a dark sky needs three.
GRIDS, FULL_GRID = (2, 3, 4), 4
WRAP_TOLERANCE = 0.1


def smallest_grids(cfg: SimConfig, conditions: dict, values: dict, image_psf: bool) -> np.ndarray:
    """Each stamp's smallest grid of :data:`GRIDS` within :data:`WRAP_TOLERANCE` at ``values``
    (the full grid where a value is not finite)."""
    pads = np.full(len(values["flux"]), FULL_GRID)
    for pad in sorted(GRIDS[:-1], reverse=True):
        with np.errstate(invalid="ignore"):
            pads[wrap_errors(cfg, conditions, values, image_psf, pad) <= WRAP_TOLERANCE] = pad
    return pads


def wrap_errors(cfg: SimConfig, conditions: dict, values: dict, image_psf: bool, pad: int) -> np.ndarray:
    """A bound on what drawing each stamp on a grid of ``pad`` stamps (instead of a much larger
    one) adds to its model, in units of its noise: the light the grid wraps onto the stamp
    comes from at least ``d = (pad - 1/2) stamp - 4`` pixels from the galaxy, where the
    Sérsic (along its major axis) plus, for a Moffat, the PSF's wing are at most ``I(d)`` per
    pixel; eight images of it on ``stamp²`` pixels give ``stamp sqrt(8) I(d) / sigma_sky``.
    Above 1″ it bounds the drawn difference (0.97 of it at worst over n 1-5, |g| 0-0.6,
    β 2-5); for smaller galaxies the difference is the renderer's own interpolation, the
    same on every grid. A PSF image has no light beyond a stamp's half width."""
    from scipy.special import gamma, gammaincinv

    from ..physics import sky_sigma

    size, scale = cfg.stamp_size, cfg.pixel_scale
    d = ((pad - 0.5) * size - 4) * scale
    flux, r_half, n = (np.asarray(values[k], float) for k in ("flux", "half_light_radius", "sersic_n"))
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
        sigma = sky_sigma(np.asarray(conditions["sky_level"], float), cfg.noise.gain, cfg.noise.read_noise)
        return np.where(np.isfinite(wing), size * np.sqrt(8) * wing * scale ** 2 / sigma, np.inf)


def _put(out: dict, rows: np.ndarray, n: int, part: dict) -> None:
    """Write a fit of the stamps ``rows`` into ``out``, the batch's table of ``n`` rows."""
    for key, value in part.items():
        if key not in out:
            out[key] = np.full(n, np.nan) if value.dtype != object else np.empty(n, object)
        out[key][rows] = value


def _fit(images: np.ndarray, cfg: SimConfig, conditions: dict, guess: dict, max_steps: int, tolerance: float,
         psf: np.ndarray | None, pad: int) -> dict[str, np.ndarray]:
    """:func:`fit_batch` of stamps drawn on a grid of ``pad`` stamps per side."""
    n = len(images)
    with torch.no_grad():
        problem = _Problem(images, cfg, conditions, psf, pad)
        start = torch.as_tensor(np.stack([np.broadcast_to(np.asarray(guess[k], float), (n,))
                                          for k in FIT_PARAMETERS], 1), dtype=torch.float32)
        usable = problem.usable & torch.isfinite(start).all(1)
        lower, upper = (_to_fitted(torch.as_tensor(b, dtype=torch.float32).clamp(-1e30, 1e30)[None])[0]
                        for b in bounds(cfg))
        phi = _to_fitted(torch.where(torch.isfinite(start), start, 1.0)).clamp(lower + 1e-6, upper - 1e-6)
        problem.fix_weights(phi)
        chi2 = problem.chi2(phi, torch.arange(n))
        converged = _levenberg_marquardt(problem, phi, chi2, (lower, upper), torch.arange(n)[usable],
                                         max_steps, tolerance)
        phi_err, model = _hessian_errors(problem, phi)
        residual, model_snr = (problem.data - model) * problem.weight, model * problem.weight
    out = _table(phi, phi_err, chi2, converged, usable.numpy(), problem.data[0].numel())
    out["galaxy_chi2_dof"], out["galaxy_chi2_sd"] = galaxy_chi2(residual.numpy(), model_snr.numpy())
    out["galaxy_chi2_dof"][~usable.numpy()] = np.nan
    return out


#: The galaxy's pixels, where a fit's misfit is judged: where the fitted model is at least
#: this many noise sigma (at least :data:`MIN_GALAXY_PIXELS` of them, the brightest).
GALAXY_SIGMA = 0.5
MIN_GALAXY_PIXELS = 9
#: The median of chi² with one degree of freedom, and chi²(1)'s density there.
CHI2_1_MEDIAN, CHI2_1_DENSITY_AT_MEDIAN = 0.4549, 0.4711


def galaxy_chi2(residual: np.ndarray, model_snr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(chi2_dof, sd)`` of ``(N, H, W)`` residuals in noise sigma over the galaxy's pixels
    (the model's ``model_snr`` per pixel >= :data:`GALAXY_SIGMA`), in units of the stamp's
    other pixels' own: their robust mean squared residual (the median over 0.455, that of
    chi² with one degree of freedom). So an error in the noise level (the border's noise
    measured a few per cent high, say) cancels, and a misfit of the galaxy shows, diluted
    neither by the empty sky nor hidden by a neighbour in it. ``sd``: its standard deviation
    for a galaxy the model fits, ``sqrt(2 / dof + 5.44 / sky_pixels)`` (the second term, the
    median's own noise: 0.04 for a 64 x 64 stamp)."""
    n = len(residual)
    chi = residual.reshape(n, -1).astype(np.float64) ** 2
    snr = model_snr.reshape(n, -1)
    threshold = np.minimum(GALAXY_SIGMA, -np.sort(-snr, axis=1)[:, MIN_GALAXY_PIXELS - 1])
    galaxy = snr >= threshold[:, None]
    with warnings.catch_warnings():  # a stamp without sky pixels: NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        sky_level = np.nanmedian(np.where(galaxy, np.nan, chi), axis=1) / CHI2_1_MEDIAN
    dof = np.fmax(galaxy.sum(axis=1) - len(FIT_PARAMETERS), 1)
    sky_pixels = np.fmax((~galaxy).sum(axis=1), 1)
    chi2_dof = np.where(galaxy, chi, 0.0).sum(axis=1) / np.fmax(sky_level, 1e-12) / dof
    # The variance of a sample median is 1 / (4 n f(m)^2), f(m) the density at the median.
    median_variance = 1 / (4 * (CHI2_1_DENSITY_AT_MEDIAN * CHI2_1_MEDIAN) ** 2)
    return chi2_dof, np.sqrt(2 / dof + median_variance / sky_pixels)


class _Problem:
    """The data, noise model and renderer of a batch fit: chi² of fitted coordinates ``phi``."""

    def __init__(self, images: np.ndarray, cfg: SimConfig, conditions: dict, psf: np.ndarray | None = None,
                 pad: int = 4):
        n = len(images)
        data = torch.as_tensor(np.asarray(images, np.float32))
        self.usable = torch.isfinite(data).flatten(1).all(1) & (data.flatten(1) != 0).any(1)
        self.data = torch.where(self.usable[:, None, None], data, 0.0)
        names = (("sky_level",) + (() if psf is not None else ("psf_fwhm",))
                 + (("psf_beta",) if cfg.psf.profile == "moffat" and psf is None else ()))
        given = {k: torch.as_tensor(np.broadcast_to(np.asarray(conditions[k], float), (n,)).copy(),
                                    dtype=torch.float32) for k in names}
        self.sky_level = given["sky_level"]
        self.renderer = SersicRenderer(cfg.stamp_size, cfg.pixel_scale, pad=pad)
        # Each stamp's PSF transform, made once: the PSF image's, or the Moffat's (not looked
        # up again at every step).
        self.psf = (_transforms(self.renderer, psf, n) if psf is not None
                    else (self.renderer.psf_spectrum(given), torch.arange(n)))
        self.noise = cfg.noise
        self.weight = None

    def model(self, phi: torch.Tensor, rows: torch.Tensor, derivatives: bool = False):
        values = _from_fitted(phi)
        params = {k: values[:, i] for i, k in enumerate(FIT_PARAMETERS)}
        distinct, which = self.psf
        params["psf_k"] = distinct[which[rows]]
        return self.renderer.with_derivatives(params) if derivatives else self.renderer(params)

    def fix_weights(self, phi: torch.Tensor) -> None:
        """The variance at the starting model, as the scipy fit: a fixed weight per pixel."""
        variance = pixel_variance(self.model(phi, torch.arange(len(phi))), self.sky_level[:, None, None],
                                  self.noise.gain, self.noise.read_noise)
        self.weight = variance.rsqrt()

    def chi2(self, phi: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return ((self.data[rows] - self.model(phi, rows)) * self.weight[rows]).square().flatten(1).sum(1)

    def jacobian(self, phi: torch.Tensor, rows: torch.Tensor):
        """``(model image, (N, pixels, 7) Jacobian of the weighted residuals' model part)``."""
        return _weighted(self.model(phi, rows, derivatives=True), self.weight[rows])


def _transforms(renderer: SersicRenderer, psf: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(distinct, which)``: the transforms of the distinct PSF images, and each stamp's."""
    planes = np.asarray(psf, np.float64)
    planes = np.broadcast_to(planes, (n, *planes.shape)) if planes.ndim == 2 else planes
    keys, which = np.unique(planes.reshape(n, -1), axis=0, return_inverse=True)
    distinct = torch.stack([renderer.psf_transform(k.reshape(planes.shape[1:])) for k in keys])
    return distinct, torch.as_tensor(which.reshape(-1))


def _levenberg_marquardt(problem: _Problem, phi: torch.Tensor, chi2: torch.Tensor, limits, active: torch.Tensor,
                         max_steps: int, tolerance: float) -> torch.Tensor:
    """Damped Gauss-Newton steps of the ``active`` stamps, ``phi`` and ``chi2`` updated in
    place; returns which stamps converged (only the stamps still moving are drawn again)."""
    lower, upper = limits
    damping = torch.full((len(phi),), 1e-3)
    converged = torch.zeros(len(phi), dtype=torch.bool)
    for _ in range(max_steps):
        if not len(active):
            break
        image, jac = problem.jacobian(phi[active], active)
        residual = ((problem.data[active] - image) * problem.weight[active]).flatten(1)
        hessian = jac.transpose(1, 2) @ jac
        gradient = (jac.transpose(1, 2) @ residual[:, :, None])[:, :, 0]
        # The Gauss-Newton decrement g^T H^-1 g: the chi² still to gain, by the model's own
        # quadratic. Below ``tolerance`` the stamp is converged, whether or not the step
        # below is accepted (float32 chi² of a few thousand cannot resolve the last 0.01).
        newton, singular = torch.linalg.solve_ex(hessian, gradient[:, :, None])
        at_minimum = (singular == 0) & ((gradient * newton[:, :, 0]).sum(1) < tolerance)
        diagonal = torch.diag_embed(torch.diagonal(hessian, dim1=1, dim2=2).clamp_min(1e-12))
        step = torch.linalg.solve(hessian + damping[active, None, None] * diagonal,
                                  gradient[:, :, None])[:, :, 0]
        trial = (phi[active] + step).clamp(lower, upper)
        trial_chi2 = problem.chi2(trial, active)
        better = trial_chi2 < chi2[active]
        gain = chi2[active] - trial_chi2
        phi[active] = torch.where(better[:, None], trial, phi[active])
        chi2[active] = torch.where(better, trial_chi2, chi2[active])
        damping[active] = torch.where(better, damping[active] / 3, damping[active] * 4).clamp(1e-7, 1e7)
        # Converged: a step that gains less than ``tolerance`` in chi² (of 1 for 1 sigma).
        done = (better & (gain < tolerance)) | at_minimum
        converged[active[done]] = True
        active = active[~done]
    return converged


def _hessian_errors(problem: _Problem, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-sigma of the fitted coordinates from the inverse of ``J^T J`` (NaN where singular),
    and the model images at ``phi``."""
    image, jac = problem.jacobian(phi, torch.arange(len(phi)))
    cov, singular = torch.linalg.inv_ex((jac.transpose(1, 2) @ jac).double())
    diagonal = torch.diagonal(cov, dim1=1, dim2=2)
    # A parameter the stamp does not constrain (e.g. a flux driven to zero) has no error.
    return torch.where((singular[:, None] == 0) & (diagonal > 0), diagonal.clamp_min(0).sqrt(), torch.nan), image


def _table(phi, phi_err, chi2, converged, usable: np.ndarray, n_pixels: int) -> dict[str, np.ndarray]:
    """Values, errors, status and chi²/dof in physical units; NaN rows for unusable stamps."""
    values = _from_fitted(phi).double().numpy()
    out = {k: values[:, i] for i, k in enumerate(FIT_PARAMETERS)}
    for i, k in enumerate(FIT_PARAMETERS):  # d value = value d log(value) for the log-fitted
        scale = values[:, i] if k in LOG_FITTED else 1.0
        out[f"{k}_err"] = phi_err[:, i].double().numpy() * scale
    out["status"] = np.where(converged.numpy(), OK, MAX_NFEV).astype(object)
    out["chi2_dof"] = chi2.double().numpy() / max(1, n_pixels - len(FIT_PARAMETERS))
    bad = ~usable
    for k in FIT_PARAMETERS:
        out[k][bad], out[f"{k}_err"][bad] = np.nan, np.nan
    out["status"][bad] = f"{FAILED}: empty or non-finite stamp or guess"
    out["chi2_dof"][bad] = np.nan
    return out


def _weighted(drawn: tuple[torch.Tensor, torch.Tensor], weight: torch.Tensor):
    """``(image, (N, pixels, 7) Jacobian of the weighted residuals' model part)``."""
    image, derivatives = drawn
    return image, (derivatives * weight[:, None]).flatten(2).transpose(1, 2)


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
