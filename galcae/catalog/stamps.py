"""Stamps made ready to measure: unusable pixels zeroed, the sky noise measured on the raw
border, and the per-row flags every catalog carries (rows are never dropped)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..conditions import border_pixels, border_sky
from .sources import Stamps

#: Per-row flags of every catalog; ``True`` means the condition holds. Rows are never dropped.
STAMP_FLAGS = {
    "flag_nan_pixels": "non-finite, masked or impossible pixels (below -10 noise sigma, e.g. -1e30 "
                       "blanks), set to 0 (background) before measuring",
    "flag_truncated": "the stamp runs over the edge of its field; the missing part is set to 0",
    "flag_adapted": "the stamp was centre-cropped or zero-padded to the expected size",
    "flag_empty": "no finite non-zero pixel: nothing to measure, values are NaN",
    "flag_unmeasurable": "not a sky-subtracted image: under half its pixels usable, or its border's "
                         "median below -3 noise sigma; values are NaN",
    "flag_background": "the border's median is above +3 noise sigma: sky left in the image, or "
                       "light beyond the stamp's edge; values may be biased",
}


#: Pixels further below zero than this many noise sigmas cannot come from a sky-subtracted
#: image (noise that deep has odds of 1e-23); they are blanks (SExtractor's -1e30, say) or damage.
IMPOSSIBLE_SIGMA = 10.0


#: A border median further from zero than this many noise sigmas is not a subtracted sky.
BACKGROUND_SIGMA = 3.0


#: Stamps with fewer usable pixels than this fraction are not measured.
MIN_USABLE_FRACTION = 0.5


#: Noise sigmas are floored at this fraction of the brightest pixel, so that noiseless
#: images (simulations) are judged by their own scale.
NOISE_FLOOR = 1e-4


@dataclass
class CleanStamps:
    """Stamps ready to measure, with what was found on the way."""

    images: np.ndarray  # finite ADU (unusable pixels set to 0)
    brightest: np.ndarray  # per stamp, max pixel
    noise_sigma: np.ndarray  # per stamp, measured on the raw border (galcae.conditions)
    flags: dict[str, np.ndarray]  # STAMP_FLAGS
    mask: np.ndarray  # (N, H, W) bool: pixels that count in no fit and no S/N (unusable: set to 0)

    @property
    def measurable(self) -> np.ndarray:
        """Stamps with something to measure that is a sky-subtracted image."""
        return ~(self.flags["flag_empty"] | self.flags["flag_unmeasurable"])


def clean(stamps: Stamps) -> CleanStamps:
    """Zero the unusable pixels (non-finite, or impossibly far below zero) and flag NaN,
    truncated, adapted, empty, unmeasurable and background-offset stamps.

    A measurable stamp is a sky-subtracted image: at least half its pixels usable and the
    median of its usable border pixels (the sky) no lower than -3 noise sigma.

    The pixels are zeroed in ``stamps.images`` itself, which the returned stamps share: a
    chunk is read for this and only this, and a second copy of 4,096 stamps is 64 MB."""
    images = stamps.images
    n = len(images)
    sky, noise = border_sky(images)  # on the raw pixels, as the conditions are measured
    # Two passes over the pixels give every per-stamp check (NaN and inf propagate to them).
    brightest, faintest = images.reshape(n, -1).max(axis=1), images.reshape(n, -1).min(axis=1)
    bad = ~(np.isfinite(brightest) & np.isfinite(faintest))
    peak = brightest.copy()
    if bad.any():
        peak[bad] = np.where(np.isfinite(images[bad]), images[bad], -np.inf).max(axis=(1, 2))
    scale = np.fmax(np.nan_to_num(noise), NOISE_FLOOR * np.clip(peak, 0.0, None))
    floor = -IMPOSSIBLE_SIGMA * scale
    bad |= faintest < floor
    usable = np.ones(n)
    mask = np.zeros(images.shape, bool)
    if bad.any():  # copy only the stamps that need it
        rows = images[bad]
        unusable = ~np.isfinite(rows) | (rows < floor[bad, None, None])
        mask[bad] = unusable
        usable[bad] = 1.0 - unusable.reshape(len(rows), -1).mean(axis=1)
        border = np.where(border_pixels(unusable), np.nan, border_pixels(rows))
        rows[unusable] = 0.0
        images[bad] = rows
        brightest[bad], faintest[bad] = rows.max(axis=(1, 2)), rows.min(axis=(1, 2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no usable border: NaN, unmeasurable
            sky[bad] = np.nanmedian(border, axis=1)  # the sky of the usable border pixels
    with np.errstate(invalid="ignore"):
        sky_low = ~(sky >= -BACKGROUND_SIGMA * scale)
        sky_high = sky > BACKGROUND_SIGMA * scale
    return CleanStamps(images, brightest, noise, {
        "flag_nan_pixels": bad & ~stamps.truncated, "flag_truncated": stamps.truncated,
        "flag_adapted": stamps.adapted, "flag_empty": (brightest == 0) & (faintest == 0),
        "flag_unmeasurable": (usable < MIN_USABLE_FRACTION) | sky_low, "flag_background": sky_high}, mask)

