"""Stars in a catalog: :func:`~galcae.estimate.stellarity.spread_model` of the measured stamps."""

from __future__ import annotations

import numpy as np

from ..config import SimConfig
from ..errors import ConfigError
from ..physics import psf_rows


def stellarity(sim: SimConfig, ready, conditions: dict, centres: dict, measured: np.ndarray,
               psf) -> dict[str, np.ndarray]:
    """``spread_model``, ``spread_model_err`` and ``flag_star`` of the ``measured`` stamps of
    ``ready`` (:class:`~galcae.catalog.stamps.CleanStamps`), at the ``centres`` found (``x``,
    ``y``, ``flux`` of those stamps), through the PSF a fit of them uses (``psf`` images, else
    the Moffat of the stamps' ``conditions`` or of ``sim``'s fixed PSF); NaN and no flag
    elsewhere, and where no PSF is known. A model that gives no centre gets the stamps' light
    centres (:func:`light_centres`)."""
    from ..estimate.refine import stamp_conditions
    from ..estimate.stellarity import spread_model

    n = len(measured)
    out = {"spread_model": np.full(n, np.nan), "spread_model_err": np.full(n, np.nan), "flag_star": np.zeros(n, bool)}
    rows = np.flatnonzero(measured)
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


#: Pixels above this many noise sigmas weigh in a stamp's light centre.
CENTRE_SIGMA = 2.0


def light_centres(images: np.ndarray, noise_sigma: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """``x``, ``y`` (galcae's pixel convention) of each stamp's light: the first moments of
    its unmasked pixels above :data:`CENTRE_SIGMA` noise sigmas (NaN where there are none)."""
    size = images.shape[-1]
    weight = np.where(~mask & (images > CENTRE_SIGMA * noise_sigma[:, None, None]), images, 0.0)
    total = weight.sum(axis=(1, 2))
    axis = np.arange(size) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (weight.sum(axis=1) * axis).sum(axis=1) / total
        y = (weight.sum(axis=2) * axis).sum(axis=1) / total
    return {"x": np.where(total > 0, x, np.nan), "y": np.where(total > 0, y, np.nan)}
