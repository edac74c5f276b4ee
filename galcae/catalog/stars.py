"""Stars in a catalog: :func:`~galcae.estimate.stellarity.spread_model` of the measured stamps."""

from __future__ import annotations

import numpy as np

from ..config import SimConfig
from ..errors import ConfigError
from ..physics import psf_rows

#: A source whose r½ is this many arcsec or more, 2σ below the value found, is resolved: not
#: a star, and not measured for one (on realistic cutouts, stars stay below 0.08″ and about
#: half of the galaxies lie above; spread_model costs about a millisecond a stamp).
RESOLVED = 0.3


def stellarity(sim: SimConfig, ready, conditions: dict, centres: dict, measured: np.ndarray,
               psf) -> dict[str, np.ndarray]:
    """``spread_model``, ``spread_model_err`` and ``flag_star`` of the ``measured`` stamps of
    ``ready`` (:class:`~galcae.catalog.stamps.CleanStamps`), at the ``centres`` found (``x``,
    ``y``, ``flux`` of those stamps), through the PSF a fit of them uses (``psf`` images, else
    the Moffat of the stamps' ``conditions`` or of ``sim``'s fixed PSF). NaN and no flag
    elsewhere, where no PSF is known, and for a source that ``centres`` (with
    ``half_light_radius`` and its ``_err``) says is resolved: r½ 2σ above :data:`RESOLVED`.
    A model that gives no centre gets the stamps' light centres (:func:`light_centres`)."""
    from ..estimate.refine import stamp_conditions
    from ..estimate.stellarity import spread_model

    n = len(measured)
    out = {"spread_model": np.full(n, np.nan), "spread_model_err": np.full(n, np.nan), "flag_star": np.zeros(n, bool)}
    resolved = np.zeros(int(measured.sum()), bool)
    if {"half_light_radius", "half_light_radius_err"} <= set(centres):
        with np.errstate(invalid="ignore"):
            resolved = (np.asarray(centres["half_light_radius"]) - 2 * np.asarray(centres["half_light_radius_err"])
                        >= RESOLVED)
    rows = np.flatnonzero(measured)[~resolved]
    centres = {k: np.asarray(centres[k])[~resolved] for k in ("x", "y", "flux") if k in centres}
    if not len(rows):
        return out
    if not {"x", "y"} <= set(centres):  # a model that does not measure the centre
        centres = light_centres(ready.images[rows], ready.noise_sigma[rows], ready.mask[rows])
    try:
        given = stamp_conditions(sim, {k: np.asarray(v)[rows] for k, v in conditions.items()}, np.arange(len(rows)))
    except ConfigError:  # a model not told the PSF of a training set whose PSF varies
        return out
    found = spread_model(sim, ready.images[rows], ready.noise_sigma[rows], given, centres, ready.mask[rows],
                         psf_rows(psf, rows))
    for key, values in found.items():
        out[key][rows] = values
    return out


#: The radius (pixels) around a stamp's brightest spot within which its light centre is taken.
CENTRE_RADIUS = 5.0


def light_centres(images: np.ndarray, noise_sigma: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """``x``, ``y`` (galcae's pixel convention) of each stamp's light: the first moments of
    its unmasked, positive pixels within :data:`CENTRE_RADIUS` of its brightest spot (the
    peak of the stamp smoothed over 3 x 3 pixels); NaN where nothing is above the noise."""
    from scipy.ndimage import uniform_filter

    n, size = len(images), images.shape[-1]
    data = np.where(mask, 0.0, np.nan_to_num(images.astype(np.float64)))
    smooth = uniform_filter(data, size=(1, 3, 3), mode="constant")
    peak = smooth.reshape(n, -1).argmax(axis=1)
    py, px = np.divmod(peak, size)
    rows, cols = np.mgrid[:size, :size]
    near = np.hypot(cols[None] - px[:, None, None], rows[None] - py[:, None, None]) <= CENTRE_RADIUS
    weight = np.where(near, np.clip(data, 0.0, None), 0.0)
    total = weight.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (weight * (cols + 0.5)).sum(axis=(1, 2)) / total
        y = (weight * (rows + 0.5)).sum(axis=(1, 2)) / total
    found = (total > 0) & (smooth.reshape(n, -1).max(axis=1) > noise_sigma)
    return {"x": np.where(found, x, np.nan), "y": np.where(found, y, np.nan)}
