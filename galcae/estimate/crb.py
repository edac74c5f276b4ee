"""The physical limit: Fisher information and Cramér–Rao bounds of Sérsic parameters.

For a galaxy with noiseless model image ``mu(theta)`` and independent pixel noise of
variance ``var`` (Poisson sky + source, Gaussian read noise: the dataset's noise model),
the Fisher matrix is ``F = J^T diag(1/var) J`` with ``J = d mu / d theta``, and no
unbiased estimator can scatter less than ``sigma_CRB = sqrt(diag(F^-1))``. The inverse
keeps the correlations between parameters (flux against radius against n, ...); the
variance's own dependence on ``theta`` is neglected (its information is negligible
beside the mean's when counts are large).

Derivatives are central differences of GalSim renderings. The shape is parametrised by
the reduced shear ``g1, g2`` (``ellipticity`` is not differentiable at 0).
"""

from __future__ import annotations

import numpy as np

from ..config import SimConfig
from ..params import DERIVED, FIT_PARAMETERS, PARAMETERS
from ..physics import make_psf, pixel_variance, render


def _step(name: str, value: float) -> float:
    """Finite-difference step: relative for scales, absolute for shapes and positions."""
    if name in ("flux", "half_light_radius"):
        return 1e-3 * abs(value)
    return {"sersic_n": 1e-3, "g1": 1e-4, "g2": 1e-4, "x": 1e-3, "y": 1e-3}[name]


def jacobian(cfg: SimConfig, theta: dict, free=FIT_PARAMETERS, psf=None) -> np.ndarray:
    """``(n_pixels, len(free))`` derivatives of the model image by central differences
    (one-sided where a step would leave the parameter's allowed range, e.g. n near 0.3)."""
    psf = psf if psf is not None else make_psf(cfg)
    columns = []
    for name in free:
        h = _step(name, theta[name])
        lo, hi = {**PARAMETERS, **DERIVED}[name].bounds
        up_value = theta[name] + h if theta[name] + h <= hi else theta[name]
        down_value = theta[name] - h if theta[name] - h >= lo else theta[name]
        up = render(cfg, {**theta, name: up_value}, psf)
        down = render(cfg, {**theta, name: down_value}, psf)
        columns.append(((up - down) / (up_value - down_value)).ravel())
    return np.stack(columns, axis=1)


def fisher_matrix(cfg: SimConfig, theta: dict, free=FIT_PARAMETERS, psf=None) -> np.ndarray:
    """Fisher information of ``free`` (the others held known) under ``cfg``'s noise model."""
    psf = psf if psf is not None else make_psf(cfg)
    n = cfg.noise
    var = pixel_variance(render(cfg, theta, psf), n.sky_level, n.gain, n.read_noise).ravel()
    J = jacobian(cfg, theta, free, psf)
    return J.T @ (J / var[:, None])


def cramer_rao(cfg: SimConfig, theta: dict, free=FIT_PARAMETERS, psf=None) -> dict[str, float]:
    """``sigma_CRB`` of each free parameter (NaN where the Fisher matrix is singular)."""
    F = fisher_matrix(cfg, theta, free, psf)
    try:
        cov = np.linalg.inv(F)
    except np.linalg.LinAlgError:
        return dict.fromkeys(free, float("nan"))
    return {name: float(np.sqrt(cov[i, i])) if cov[i, i] > 0 else float("nan")
            for i, name in enumerate(free)}
