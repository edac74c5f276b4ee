"""The classical baseline: a maximum-likelihood Sérsic fit of each stamp.

GalSim renders the PSF-convolved Sérsic model (the same code that made the training
set, so the model is exact) and scipy's ``least_squares`` (trust region reflective,
bounded) minimises chi² with the per-pixel variance of the dataset's noise model at the
initial guess. The initial guess is deterministic, from HSM adaptive moments. Bounds
keep n and the radius where GalSim stays fast (runaway n and radius are what make such
fits take minutes). Measured choice (by the team, not yet a benchmark script): Imfit,
AstroPhot and GalSim + scipy all reach the Cramér–Rao bound at ~0.17 s per 64x64 stamp;
this one needs no new dependency and shares the renderer with the simulation and the CRB.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING

import numpy as np

from ..config import ConfigError, SimConfig
from ..params import FAILED, FIT_PARAMETERS, MAX_NFEV, OK, PARAMETERS
from ..physics import make_psf, pixel_variance, psf_from_image, psf_rows, render

if TYPE_CHECKING:  # GalSim and scipy.optimize are imported where this fit runs: about a second that the
    import galsim  # batch fit and spread_model, which only need the bounds, need not pay


def bounds(cfg: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of :data:`FIT_PARAMETERS` (r½ up to 0.4 of the stamp side)."""
    size = cfg.stamp_size
    lo_n, hi_n = PARAMETERS["sersic_n"].bounds
    # |g1|, |g2| <= 0.7 keeps |g| < 1 (GalSim's limit) in the corners of the box.
    lower = [1e-3, 0.02, lo_n, -0.7, -0.7, 0.0, 0.0]
    upper = [np.inf, 0.4 * size * cfg.pixel_scale, min(hi_n, 6.0), 0.7, 0.7, size, size]
    return np.array(lower, float), np.array(upper, float)


def initial_guess(image: np.ndarray, cfg: SimConfig, psf: galsim.GSObject) -> dict[str, float]:
    """Flux, size, shape and centre from HSM adaptive moments (plain moments if HSM fails)."""
    import galsim

    size = cfg.stamp_size
    total = float(np.sum(image))
    guess = {"flux": max(total, 10.0), "half_light_radius": 1.0, "sersic_n": 1.5,
             "g1": 0.0, "g2": 0.0, "x": size / 2, "y": size / 2}
    try:
        moments = galsim.hsm.FindAdaptiveMom(galsim.Image(np.ascontiguousarray(image, np.float64),
                                                          scale=cfg.pixel_scale), strict=True)
    except (galsim.GalSimHSMError, galsim.GalSimError, ValueError):
        return guess
    psf_sigma = psf.calculateMomentRadius(scale=cfg.pixel_scale, rtype="det")  # arcsec
    sigma = moments.moments_sigma * cfg.pixel_scale
    intrinsic = np.sqrt(max(sigma**2 - psf_sigma**2, (0.3 * sigma) ** 2))
    shear = moments.observed_shape  # galsim.Shear: distortion of the PSF-convolved image
    guess.update(flux=max(moments.moments_amp, total, 10.0),
                 half_light_radius=float(intrinsic * np.sqrt(2 * np.log(2))),
                 g1=float(np.clip(shear.g1, -0.5, 0.5)), g2=float(np.clip(shear.g2, -0.5, 0.5)),
                 # HSM's centroid is GalSim's (first pixel centred at 1); galcae's origin is the corner.
                 x=moments.moments_centroid.x - 0.5, y=moments.moments_centroid.y - 0.5)
    return inside_bounds(guess, cfg)


def inside_bounds(theta: dict, cfg: SimConfig) -> dict[str, float]:
    """``theta``'s :data:`FIT_PARAMETERS`, clipped just inside :func:`bounds`."""
    lower, upper = bounds(cfg)
    vector = np.clip([theta[n] for n in FIT_PARAMETERS], lower + 1e-9, upper - 1e-9)
    return dict(zip(FIT_PARAMETERS, map(float, vector)))


class _OutOfTime(Exception):
    pass


def fit_stamp(image: np.ndarray, cfg: SimConfig, psf: galsim.GSObject | None = None,
              max_nfev: int = 100, max_seconds: float = 20.0, guess: dict | None = None,
              mask: np.ndarray | None = None) -> dict:
    """Fit one sky-subtracted ADU stamp; return values, ``<name>_err``, status and cost.

    ``guess``: the starting point (e.g. the CAE's estimate; clipped into the bounds),
    instead of HSM adaptive moments. ``mask``: ``(H, W)`` bool, pixels that carry no weight
    (neighbours, bad pixels; set to 0 for the moments).

    ``<name>_err`` comes from the inverse of ``J^T J`` at the solution (J of the weighted
    residuals): the fit's own Cramér–Rao-style error estimate. A fit that takes more than
    ``max_nfev`` steps or ``max_seconds`` (a safety net against GalSim's cost exploding
    when n and the radius run away; the only non-deterministic outcome) stops with its
    status saying so, and is flagged as failed.
    """
    import galsim
    from scipy.optimize import least_squares

    psf = psf if psf is not None else make_psf(cfg)
    start = time.perf_counter()
    keep = np.ones(image.shape, bool) if mask is None else ~np.asarray(mask, bool)
    image = np.where(keep, image, 0.0)
    if not np.all(np.isfinite(image)) or not np.any(image):
        return failed_fit("empty or non-finite stamp", time.perf_counter() - start)
    guess = initial_guess(image, cfg, psf) if guess is None else inside_bounds(guess, cfg)
    noise = cfg.noise
    weight = keep.ravel() / np.sqrt(pixel_variance(render(cfg, guess, psf), noise.sky_level, noise.gain,
                                                   noise.read_noise)).ravel()
    data = image.astype(np.float64).ravel()
    scale = np.array([max(guess["flux"], 1.0), 0.3, 0.5, 0.1, 0.1, 0.5, 0.5])

    def residuals(v):
        if time.perf_counter() - start > max_seconds:
            raise _OutOfTime
        try:
            model = render(cfg, dict(zip(FIT_PARAMETERS, v)), psf)
        except galsim.GalSimFFTSizeWarning:
            # A trial step GalSim cannot render within max_fft_size (huge n and radius):
            # score it as a very poor fit, so the trust region steps back.
            return np.full(data.size, 1e3)
        return (data - model.ravel()) * weight

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", galsim.GalSimFFTSizeWarning)
            result = least_squares(residuals, [guess[n] for n in FIT_PARAMETERS], bounds=bounds(cfg),
                                   x_scale=scale, diff_step=1e-3, max_nfev=max_nfev, method="trf")
    except _OutOfTime:
        return failed_fit(f"over {max_seconds:g} s", time.perf_counter() - start)
    except (galsim.GalSimError, galsim.GalSimFFTSizeWarning, ValueError, MemoryError) as err:
        return failed_fit(f"{type(err).__name__}: {str(err).splitlines()[0]}", time.perf_counter() - start)
    out = dict(zip(FIT_PARAMETERS, map(float, result.x)))
    out.update({f"{name}_err": np.nan for name in FIT_PARAMETERS})
    try:
        cov = np.linalg.inv(result.jac.T @ result.jac)
        out.update({f"{n}_err": float(np.sqrt(cov[i, i])) if cov[i, i] > 0 else np.nan
                    for i, n in enumerate(FIT_PARAMETERS)})
    except np.linalg.LinAlgError:
        pass
    dof = max(1, int(keep.sum()) - len(FIT_PARAMETERS))
    return {**out, "status": OK if result.status > 0 else MAX_NFEV, "nfev": int(result.nfev),
            "chi2_dof": float(2 * result.cost / dof), "seconds": time.perf_counter() - start}


def fit_images(images: np.ndarray, cfg: SimConfig, max_nfev: int = 100,
               conditions: dict | None = None, measurable: np.ndarray | None = None,
               psf_images: np.ndarray | None = None, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """:func:`fit_stamp` over a stack; one array per output column. ``conditions`` holds
    per-image ``psf_fwhm``, ``psf_beta``, ``sky_level`` where ``cfg`` draws them per galaxy;
    a stamp whose conditions are impossible, or that is not ``measurable``, is a failed row.
    ``psf_images`` (one ``(p, p)`` for all or ``(N, p, p)``, unit sum, pixel included): the
    PSF itself, instead of ``cfg``'s profile. ``mask``: ``(N, H, W)`` bool, pixels without
    weight."""
    from threadpoolctl import threadpool_limits

    conditions = conditions or {}
    fixed = None if conditions else (cfg, make_psf(cfg))
    measurable = np.ones(len(images), bool) if measurable is None else measurable
    rows = []
    with threadpool_limits(1):
        for i, image in enumerate(images):
            if not measurable[i]:
                rows.append(failed_fit("not a measurable stamp (see its flags)"))
                continue
            try:
                galaxy_cfg, psf = fixed or (lambda c: (c, make_psf(c)))(
                    cfg.for_galaxy({k: v[i] for k, v in conditions.items()}))
            except ConfigError as err:  # the stamp's PSFFWHM = -1, say
                rows.append(failed_fit(str(err)))
                continue
            if psf_images is not None:
                psf = _image_psf(psf_images, i, cfg.pixel_scale)
            rows.append(fit_stamp(image, galaxy_cfg, psf, max_nfev, mask=None if mask is None else mask[i]))
    keys = rows[0].keys() if rows else ()
    return {k: np.array([r[k] for r in rows], dtype=object if k == "status" else None) for k in keys}


def _image_psf(psf_images: np.ndarray, i: int, pixel_scale: float) -> galsim.GSObject:
    """Stamp ``i``'s PSF image as a GalSim profile (one built for all when there is one image)."""
    return psf_from_image(psf_rows(psf_images, i), pixel_scale)


def failed_fit(reason: str, seconds: float = 0.0) -> dict:
    """The row of a fit that could not be made."""
    return {**{name: np.nan for name in FIT_PARAMETERS}, **{f"{name}_err": np.nan for name in FIT_PARAMETERS},
            "status": f"{FAILED}: {reason}", "nfev": 0, "chi2_dof": np.nan, "seconds": seconds}


