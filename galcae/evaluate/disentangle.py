"""Disentanglement shown, not claimed: move one supervised latent, decode, and measure the
decoded galaxy with the classical fit. The moved parameter should follow its latent; every
other one should stay within its noise (the Cramér–Rao bound of that galaxy)."""

from __future__ import annotations

import numpy as np

from ..estimate.crb import cramer_rao
from ..estimate.fit import bounds, fit_stamp
from ..params import FIT_PARAMETERS
from ..physics import make_psf

#: The status of a step the fit cannot measure: the moved parameter's encoded value lies
#: outside the fit's bounds (e.g. an r½ over 0.4 of the stamp), where a fit pinned at the
#: bound would pass for a response below 1 and a leak into the other parameters.
OUTSIDE = "not fitted: outside the fit's bounds"


def sky_free(images: np.ndarray) -> np.ndarray:
    """The convolutional decoder's sky is not exactly zero: subtract each image's border
    median. (Not for the sersic decoder: on a large galaxy the border holds its wings, and
    subtracting them took the fitted r½ of a 1.46″ decoded galaxy to 1.28″.)"""
    border = np.concatenate([images[:, :2].reshape(len(images), -1),
                             images[:, -2:].reshape(len(images), -1)], axis=1)
    return images - np.median(border, axis=1)[:, None, None]


def remeasured_traversals(model, z0: np.ndarray, conditions: dict, galaxy_cfg, steps: np.ndarray,
                          max_seconds: float = 30.0) -> dict:
    """Fit every decoded image of each supervised latent's traversal from ``z0``.

    ``conditions``: the galaxy's model conditions (scalars; empty for an unconditioned model);
    ``galaxy_cfg``: a SimConfig with its PSF and sky fixed (the fit's PSF and noise model).
    Returns per traversed parameter the fitted values, the changes of every parameter in
    units of its Cramér–Rao bound, the response (slope of the fitted against the encoded
    value of the moved parameter over the converged fits, 1 is ideal), the leak (largest
    change of any other parameter in bound units; within the noise is <= 1), the moved
    parameter's own largest change in bound units, and the cross-talk, leak / own change:
    the leak per bound-unit of intended change, which does not depend on the step size (a
    step that moves the parameter by 3 sigma keeps the others within the noise if the
    cross-talk is below 1/3). A fit that takes over ``max_seconds`` counts as failed; a
    step whose moved parameter leaves the fit's bounds is not fitted (:data:`OUTSIDE`).
    """
    psf = make_psf(galaxy_cfg)
    n = len(steps)
    cond = {k: np.full(n, float(v)) for k, v in conditions.items()}
    centre = int(np.argmin(np.abs(steps)))
    names = model.supervised
    lower, upper = (dict(zip(FIT_PARAMETERS, b)) for b in bounds(galaxy_cfg))
    out = {}
    sigma = None
    for k, name in enumerate(names):
        z = np.repeat(np.asarray(z0, np.float32)[None, :], n, axis=0)
        z[:, k] += steps
        intended = model.scaling.to_physical(z[:, :len(names)])[name]
        measurable = ((intended > lower[name]) & (intended < upper[name]) if name in lower
                      else np.ones(n, bool))
        images = model.decode(z, cond)
        if model.network.arch.decoder == "conv":  # the sersic decoder draws no sky at all
            images = sky_free(images)
        fits = [fit_stamp(im, galaxy_cfg, psf, max_seconds=max_seconds) if ok
                else {**dict.fromkeys(FIT_PARAMETERS, np.nan), "status": OUTSIDE}
                for im, ok in zip(images, measurable)]
        values = {q: np.array([f[q] for f in fits], float) for q in FIT_PARAMETERS}
        if sigma is None:  # the bound of the unmoved decoded galaxy: its parameters' noise
            reference = {q: float(values[q][centre]) for q in FIT_PARAMETERS}
            finite = all(np.isfinite(v) for v in reference.values())
            # A decoded galaxy the fit cannot measure has no bound: its changes stay NaN.
            sigma = (cramer_rao(galaxy_cfg, reference, psf=psf) if finite
                     else dict.fromkeys(FIT_PARAMETERS, np.nan))
        change = {q: ((values[q] - values[q][centre]) / sigma[q]).tolist() for q in FIT_PARAMETERS}
        response = None
        usable = np.isfinite(values[name]) if name in values else np.zeros(n, bool)
        if usable.sum() >= 2:  # slope of fitted against encoded value, over the fits that worked
            response = float(np.polyfit(intended[usable], values[name][usable], 1)[0])
        others = [q for q in FIT_PARAMETERS if q != name]
        leak = _leak(change, others)
        own = (float(np.nanmax(np.abs(change[name])))
               if name in change and np.isfinite(change[name]).any() else float("nan"))
        out[name] = {"delta_z": steps.tolist(), "intended": intended.tolist(),
                     "fitted": {q: v.tolist() for q, v in values.items()},
                     "change_in_crb_units": change, "response": response, **leak,
                     "own_change": own,
                     "cross_talk": leak["leak"] / own if own > 0 else float("nan"),
                     "fit_status": [f["status"] for f in fits]}
    return {"crb_of_reference": sigma, "traversals": out}


def _leak(change: dict, others) -> dict:
    """The largest |change| among ``others`` and which parameter it is (NaN if none measured)."""
    worst = [np.nanmax(np.abs(change[q])) if np.isfinite(change[q]).any() else np.nan for q in others]
    if not np.isfinite(worst).any():
        return {"leak": float("nan"), "leak_parameter": None}
    i = int(np.nanargmax(worst))
    return {"leak": float(worst[i]), "leak_parameter": others[i]}
