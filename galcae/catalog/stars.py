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
    elsewhere, and where no centre or PSF is known."""
    from ..estimate.refine import stamp_conditions
    from ..estimate.stellarity import spread_model

    n = len(measured)
    out = {"spread_model": np.full(n, np.nan), "spread_model_err": np.full(n, np.nan), "flag_star": np.zeros(n, bool)}
    rows = np.flatnonzero(measured)
    if not len(rows) or not {"x", "y"} <= set(centres):
        return out
    try:
        given = stamp_conditions(sim, {k: np.asarray(v)[rows] for k, v in conditions.items()}, np.arange(len(rows)))
    except ConfigError:  # a model not told the PSF of a training set whose PSF varies
        return out
    found = spread_model(sim, ready.images[rows], ready.noise_sigma[rows], given, centres, ready.mask[rows],
                         psf_rows(psf, rows))
    for key, values in found.items():
        out[key][rows] = values
    return out
