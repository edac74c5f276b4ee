"""Stars among the galaxies: SExtractor's ``spread_model`` (Desai et al. 2012, ApJ 757, 83).

A star is the PSF; a galaxy is wider. ``spread_model`` compares how well the stamp matches
the PSF ``P`` at the source's centre and a slightly wider model ``G`` (the PSF convolved with
a round exponential of scale length FWHM/16), through the linear discriminant

    spread_model = (G·x) / (P·x) - (G·P) / (P·P)

(dot products over the unmasked pixels): about 0 for a point source whatever its flux, positive
for a resolved one, negative for a source sharper than the PSF (a cosmic ray, a bad PSF). Its
error propagates the sky noise. It needs no fit, only the PSF, which the catalog has for the
refinement anyway (PSF images, or the Moffat of the conditions).
"""

from __future__ import annotations

import numpy as np

#: The exponential's scale length in units of the PSF's FWHM (Desai et al. 2012).
SCALE_LENGTH = 1.0 / 16.0
#: An exponential's half-light radius in units of its scale length.
EXPONENTIAL_HALF_LIGHT = 1.6783469900166608
#: The "point source" drawn as the PSF: a Sérsic this small (arcsec) is the PSF to float32.
POINT = 1e-3
#: ``flag_star`` where ``spread_model + STAR_ERRORS * spread_model_err < STAR_THRESHOLD``: a
#: source whose width is, within its errors, the PSF's (see docs/catalog.md for completeness
#: and purity on simulated stars and galaxies).
STAR_THRESHOLD = 0.002
STAR_ERRORS = 5.0 / 3.0

#: The side (pixels) of the window around the source on which spread_model is measured.
WINDOW = 32
#: Stamps measured together: their float64 windows stay in the CPU's cache (4,096 at a time
#: took 2.5 times as long per stamp as 1,024).
BLOCK = 512

#: The catalog columns of stellarity, with their descriptions.
STELLARITY_COLUMNS = {
    "spread_model": "SExtractor's spread_model: how much wider than the PSF the source is (about 0 for a "
                    "star, positive for a galaxy, negative for a source sharper than the PSF)",
    "spread_model_err": "1-sigma uncertainty of spread_model from the sky noise",
}
STAR_FLAG = {"flag_star": f"a point source: spread_model + {STAR_ERRORS:.3g} spread_model_err < {STAR_THRESHOLD:g} "
                          "(a star, or a galaxy too small to resolve); its galaxy parameters mean little"}


def spread_model(sim, images: np.ndarray, noise_sigma: np.ndarray, conditions: dict, centres: dict,
                 mask: np.ndarray | None = None, psf: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``spread_model``, ``spread_model_err`` and ``flag_star`` of ``(N, H, W)`` sky-subtracted
    stamps with per-stamp ``noise_sigma`` (ADU). ``centres``: each source's ``x``, ``y`` (and
    ``flux``, which sets the FFT grid). ``conditions``: ``psf_fwhm`` (the exponential's scale)
    and, without PSF images, ``psf_beta`` (as :func:`galcae.estimate.refine.stamp_conditions`
    gives them); ``psf``: PSF images, one for all or one per stamp. ``mask``ed pixels do not
    count. NaN (and no flag) where a stamp or its centre is not finite."""
    from ..physics import psf_rows

    n = len(images)
    out = {"spread_model": np.full(n, np.nan), "spread_model_err": np.full(n, np.nan),
           "flag_star": np.zeros(n, bool)}
    x, y = (np.asarray(centres[k], float) for k in ("x", "y"))
    fwhm = np.asarray(conditions["psf_fwhm"], float)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(fwhm) & np.isfinite(noise_sigma) & (noise_sigma > 0)
    found = np.flatnonzero(ok)
    for first in range(0, len(found), BLOCK):
        rows = found[first:first + BLOCK]
        part = _spread_model(sim, images[rows], noise_sigma[rows],
                             {k: np.asarray(v, float)[rows] for k, v in conditions.items()},
                             {k: np.asarray(v, float)[rows] for k, v in centres.items()},
                             None if mask is None else mask[rows], psf_rows(psf, rows))
        for key, values in part.items():
            out[key][rows] = values
    return out


def _spread_model(sim, images, noise_sigma, conditions, centres, mask, psf) -> dict[str, np.ndarray]:
    """:func:`spread_model` of stamps whose centres, PSF and noise are all finite."""
    import dataclasses

    from ..physics import sky_level_for_sigma
    from .batchfit import models_at

    n = len(images)
    x, y, fwhm = centres["x"], centres["y"], conditions["psf_fwhm"]
    flux = np.clip(np.nan_to_num(centres.get("flux", np.ones(n)), nan=1.0), 1.0, None)
    given = dict(conditions)
    if "sky_level" not in given:  # it sets the grid the models are drawn on
        given["sky_level"] = sky_level_for_sigma(noise_sigma, sim.noise.gain, sim.noise.read_noise)
    # P and G are drawn on a window around the source, not the whole stamp: a quarter of the
    # pixels and of the FFTs, and beyond it they hold little of the discriminant.
    side = min(WINDOW, sim.stamp_size)
    corner_x, corner_y = (np.clip(np.floor(v).astype(int) - side // 2, -side, sim.stamp_size) for v in (x, y))
    data, keep = _windows(images, mask, corner_x, corner_y, side)
    base = {"flux": flux, "sersic_n": np.ones(n), "g1": np.zeros(n), "g2": np.zeros(n),
            "x": x - corner_x, "y": y - corner_y}
    image_psf = None if psf is None else _central(psf, side - 1)
    window = dataclasses.replace(sim, stamp_size=side)
    # P and G drawn in one batch: each distinct PSF's transform is made once for both
    radius = np.concatenate([np.full(n, POINT), fwhm * SCALE_LENGTH * EXPONENTIAL_HALF_LIGHT])
    both = models_at(window, {k: np.tile(v, 2) for k, v in given.items()},
                     {**{k: np.tile(v, 2) for k, v in base.items()}, "half_light_radius": radius},
                     image_psf if image_psf is None or np.ndim(image_psf) == 2 else np.concatenate([image_psf] * 2))
    P, G = both[:n] * keep, both[n:] * keep

    def dot(a, b):
        return np.einsum("nij,nij->n", a, b, dtype=np.float64)

    px, gx, gp, pp, gg = dot(P, data), dot(G, data), dot(G, P), dot(P, P), dot(G, G)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = gx / px - gp / pp
        variance = noise_sigma ** 2 * (gg * px**2 - 2 * gp * gx * px + pp * gx**2) / px**4
        error = np.sqrt(np.clip(variance, 0, None))
    usable = px > 0  # a stamp with no light where the PSF is has no spread
    with np.errstate(invalid="ignore"):
        star = usable & (value + STAR_ERRORS * error < STAR_THRESHOLD)
    return {"spread_model": np.where(usable, value, np.nan), "spread_model_err": np.where(usable, error, np.nan),
            "flag_star": star}


def _windows(images: np.ndarray, mask: np.ndarray | None, corner_x: np.ndarray, corner_y: np.ndarray,
             side: int) -> tuple[np.ndarray, np.ndarray]:
    """``(data, keep)``: the ``side``-pixel windows of ``images`` whose lower-left corners
    are at ``corner_x``, ``corner_y``; pixels off the stamp, masked or not finite are not kept."""
    n, height, width = images.shape
    rows = corner_y[:, None, None] + np.arange(side)[None, :, None]  # (n, side, 1)
    cols = corner_x[:, None, None] + np.arange(side)[None, None, :]  # (n, 1, side)
    on = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    at = (np.arange(n)[:, None, None], rows.clip(0, height - 1), cols.clip(0, width - 1))
    cut = images[at].astype(np.float64)
    keep = on & np.isfinite(cut) & (True if mask is None else ~mask[at])
    return np.where(keep, cut, 0.0), keep


def _central(psf: np.ndarray, side: int) -> np.ndarray:
    """PSF images cut to their central ``side`` pixels where larger (spread_model is blind to
    their normalisation; the window's models then miss only the far wings)."""
    size = psf.shape[-1]
    if size <= side:
        return psf
    start = (size - side) // 2
    return psf[..., start:start + side, start:start + side]
