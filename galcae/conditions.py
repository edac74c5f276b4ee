"""Observing conditions a conditioned model takes besides the image.

``psf_fwhm`` (arcsec) and ``psf_beta`` (Moffat) come from the simulation or, at
inference, from the user (options or FITS header); ``noise_sigma`` is measured on each
stamp in the same way in training and at inference (robust scatter of the outer
pixels), so the model never depends on a noise figure the user has to know.
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.stats import mad_std

#: Width in pixels of the stamp border on which the sky noise is measured.
BORDER = 4


def stamp_noise_sigma(images: np.ndarray) -> np.ndarray:
    """``(N,)`` sky-noise sigma in ADU of ``(N, H, W)`` stamps: the ``mad_std`` of their outer
    :data:`BORDER` pixels, NaN pixels ignored (NaN for a stamp without finite border pixels)."""
    values = border_pixels(images)
    finite = np.isfinite(values).all(axis=1)
    out = np.empty(len(values))
    out[finite] = mad_std(values[finite], axis=1)  # the NaN-aware median is several times slower
    if not finite.all():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN stamps give NaN, by design
            out[~finite] = mad_std(values[~finite], axis=1, ignore_nan=True)
    return out


def border_pixels(images: np.ndarray) -> np.ndarray:
    """``(N, n_border)`` values of the outer :data:`BORDER` pixels of ``(N, H, W)`` stamps."""
    images = np.asarray(images)
    ring = np.ones(images.shape[-2:], bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    return images[:, ring]


def condition_table(names, images: np.ndarray, given: dict) -> dict[str, np.ndarray]:
    """The ``names`` conditions of each stamp: ``given`` values (scalars broadcast, arrays per
    stamp) and, unless given, ``noise_sigma`` measured on the stamps.

    Raises ``ValueError`` naming the first condition neither given nor measurable.
    """
    n = len(images)
    out = {}
    for name in names:
        if name in given and given[name] is not None:
            out[name] = np.broadcast_to(np.asarray(given[name], float), (n,)).copy()
        elif name == "noise_sigma":
            out[name] = stamp_noise_sigma(images)
        else:
            raise ValueError(f"the model needs the observing condition '{name}' for every stamp "
                             f"(e.g. --{name.replace('_', '-')} VALUE)")
    return out
