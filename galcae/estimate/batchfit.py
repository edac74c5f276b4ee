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

import numpy as np
import torch

from ..config import SimConfig
from ..params import FAILED, FIT_PARAMETERS, MAX_NFEV, OK
from ..physics import pixel_variance
from .fit import bounds
from ..render import FITTED, SersicRenderer

#: Fitted in the log (positive, and steps relative), as the renderer's derivatives are.
LOG_FITTED = tuple(name.removeprefix("log_") for name in FITTED if name.startswith("log_"))


def fit_batch(images: np.ndarray, cfg: SimConfig, conditions: dict, guess: dict,
              max_steps: int = 20, tolerance: float = 0.01) -> dict[str, np.ndarray]:
    """Fit ``(N, H, W)`` sky-subtracted ADU stamps from ``guess`` (one array per
    :data:`FIT_PARAMETERS`, e.g. the CAE's estimates; clipped into the bounds).

    ``conditions``: per-stamp ``psf_fwhm``, ``psf_beta`` (for ``cfg``'s Moffat PSF) and
    ``sky_level`` (ADU; with ``cfg``'s gain and read noise, the noise model), arrays or
    scalars. Returns the fitted values, ``<name>_err`` (from the inverse of ``J^T J``; NaN
    where it is singular), ``status`` (``ok`` when a step lowered chi² by less than
    ``tolerance`` or the Gauss-Newton model has less than that left to gain, ``max_nfev``
    after ``max_steps`` steps, ``failed: ...`` for a blank or
    non-finite stamp or guess) and ``chi2_dof``, one array each.
    """
    n = len(images)
    with torch.no_grad():
        data = torch.as_tensor(np.asarray(images, np.float32))
        usable = torch.isfinite(data).flatten(1).all(1) & (data.flatten(1) != 0).any(1)
        data = torch.where(usable[:, None, None], data, 0.0)
        names = ("psf_fwhm", "sky_level") + (("psf_beta",) if cfg.psf.profile == "moffat" else ())
        cond = {k: torch.as_tensor(np.broadcast_to(np.asarray(conditions[k], float), (n,)).copy(),
                                   dtype=torch.float32) for k in names}
        lower, upper = (_to_fitted(torch.as_tensor(b, dtype=torch.float32).clamp(-1e30, 1e30)[None])[0]
                        for b in bounds(cfg))
        start = torch.as_tensor(np.stack([np.broadcast_to(np.asarray(guess[k], float), (n,))
                                          for k in FIT_PARAMETERS], 1), dtype=torch.float32)
        usable &= torch.isfinite(start).all(1)
        phi = _to_fitted(torch.where(torch.isfinite(start), start, 1.0)).clamp(lower + 1e-6, upper - 1e-6)
        renderer = SersicRenderer(cfg.stamp_size, cfg.pixel_scale)
        noise = cfg.noise

        def model(p, rows, derivatives: bool = False):
            values = _from_fitted(p)
            params = {**{k: values[:, i] for i, k in enumerate(FIT_PARAMETERS)},
                      **{k: v[rows] for k, v in cond.items()}}
            return renderer.with_derivatives(params) if derivatives else renderer(params)

        def chi2_of(p, rows):
            return ((data[rows] - model(p, rows)) * weight[rows]).square().flatten(1).sum(1)

        every = torch.arange(n)
        # The variance at the starting model, as the scipy fit: a fixed weight per pixel.
        variance = pixel_variance(model(phi, every), cond["sky_level"][:, None, None], noise.gain,
                                  noise.read_noise)
        weight = variance.rsqrt()
        chi2 = chi2_of(phi, every)
        damping = torch.full((n,), 1e-3)
        converged = torch.zeros(n, dtype=torch.bool)
        active = every[usable]  # only the stamps still moving are drawn again
        for _ in range(max_steps):
            if not len(active):
                break
            image, jac = _weighted(model(phi[active], active, derivatives=True), weight[active])
            residual = ((data[active] - image) * weight[active]).flatten(1)
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
            trial_chi2 = chi2_of(trial, active)
            better = trial_chi2 < chi2[active]
            gain = chi2[active] - trial_chi2
            phi[active] = torch.where(better[:, None], trial, phi[active])
            chi2[active] = torch.where(better, trial_chi2, chi2[active])
            damping[active] = torch.where(better, damping[active] / 3, damping[active] * 4).clamp(1e-7, 1e7)
            # Converged: a step that gains less than ``tolerance`` in chi² (of 1 for 1 sigma).
            done = (better & (gain < tolerance)) | at_minimum
            converged[active[done]] = True
            active = active[~done]
        jac = _weighted(model(phi, every, derivatives=True), weight)[1]
        cov, singular = torch.linalg.inv_ex((jac.transpose(1, 2) @ jac).double())
        diagonal = torch.diagonal(cov, dim1=1, dim2=2)
        # A parameter the stamp does not constrain (e.g. a flux driven to zero) has no error.
        phi_err = torch.where((singular[:, None] == 0) & (diagonal > 0), diagonal.clamp_min(0).sqrt(), torch.nan)
    values = _from_fitted(phi).double().numpy()
    out = {k: values[:, i] for i, k in enumerate(FIT_PARAMETERS)}
    for i, k in enumerate(FIT_PARAMETERS):  # d value = value d log(value) for the log-fitted
        scale = values[:, i] if k in LOG_FITTED else 1.0
        out[f"{k}_err"] = phi_err[:, i].double().numpy() * scale
    out["status"] = np.where(converged.numpy(), OK, MAX_NFEV).astype(object)
    out["chi2_dof"] = chi2.double().numpy() / max(1, data[0].numel() - len(FIT_PARAMETERS))
    bad = ~usable.numpy()
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
