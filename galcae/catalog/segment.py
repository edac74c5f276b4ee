"""Every stamp segmented: its sources detected with sep (SExtractor's algorithms: a matched
filter, a threshold in units of the stamp's own noise, multi-threshold deblending), the
central one kept as the galaxy, the others masked, and how blended the galaxy is.

A masked pixel carries no weight in any fit and reaches the network as sky noise of the
stamp's sigma (``galcae infer``), never as light. What cannot be undone by masking -- a
neighbour's light under the galaxy itself -- is measured (``blendedness``) and flagged
(``flag_blended``); rows are never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..estimate.neighbours import Neighbours, sep_for_stamps, source_rows

#: Detection threshold, in units of the stamp's noise sigma per pixel (sep compares its default
#: 3 x 3 smoothed image with it: about 4 sigma of that image), and the fewest connected pixels
#: that make a source.
DETECT_SIGMA, MIN_AREA = 1.5, 5
#: A source whose segment holds the stamp's centre, or else whose centre is within this many
#: pixels of it, is the galaxy the stamp is about.
CENTRE_RADIUS = 4.0
#: Pixels by which the other sources' segments are grown into the mask: their wings below
#: the threshold (never into the galaxy's own segment).
GROW = 2
#: ``flag_blended`` above this blendedness: the fraction of the light inside the galaxy's
#: aperture that its neighbours' models put there. The Gaussian models have no wings, so
#: this is a lower bound, often ten times below the truth: on realistic cutouts
#: (``benchmarks/realistic.py``) 0.01 flags half of those where neighbours put more than 5 %
#: of the light inside the galaxy's isophote, and almost nothing else.
BLENDED = 0.01

#: Half-width in pixels of the box about the stamp's centre that must be mostly unmasked.
CENTRE_BOX = 2

SEGMENT_FLAGS = {
    "flag_undetected": f"no source detected within {CENTRE_RADIUS:g} pixels of the stamp's centre "
                       f"(above {DETECT_SIGMA:g} noise sigma per pixel, {MIN_AREA} pixels): too faint "
                       "to detect, or nothing there; measured as it is, with the sources detected "
                       "elsewhere masked",
    "flag_centre_masked": "most of the stamp's central 5 x 5 pixels are masked (bad pixels, or a "
                          "neighbour's segment): not measured, values are NaN",
    "flag_blended": f"blendedness above {BLENDED}: neighbours put that fraction of the light inside "
                    "the galaxy's aperture, or (refined rows) a neighbour merged with the galaxy was found "
                    "in the refining fit's residual; values may be biased",
}
SEGMENT_COLUMNS = {
    "n_neighbours": "other sources detected in the stamp (their pixels are masked), with those the "
                    "refining fit found merged with the galaxy",
    "blendedness": "fraction of the light in the galaxy's aperture from its neighbours, by Gaussian "
                   "models of each source's flux and second moments (0: isolated; a lower bound)",
}


@dataclass
class Segmentation:
    """What segmenting a chunk of stamps found."""

    mask: np.ndarray  # (N, H, W) bool: the other sources' pixels, grown by GROW
    n_neighbours: np.ndarray  # (N,) int
    blendedness: np.ndarray  # (N,) float; NaN where not segmented
    undetected: np.ndarray  # (N,) bool: no central source detected
    centre_masked: np.ndarray  # (N,) bool: the centre mostly masked, with the stamp's own mask
    neighbours: Neighbours  # the segmentation maps and the other sources, for their models

    @property
    def flags(self) -> dict[str, np.ndarray]:
        with np.errstate(invalid="ignore"):
            return {"flag_undetected": self.undetected, "flag_centre_masked": self.centre_masked,
                    "flag_blended": self.blendedness > BLENDED}


def mask_neighbours(ready) -> "Segmentation":
    """Segment cleaned stamps (:class:`~galcae.catalog.stamps.CleanStamps`, the measurable
    ones) and add their neighbours to ``ready.mask``: what every catalog does before it
    measures."""
    segments = segment(ready.images, ready.noise_sigma, ready.mask, todo=ready.measurable)
    ready.mask |= segments.mask
    return segments


def fill_with_sky(images: np.ndarray, mask: np.ndarray, noise_sigma: np.ndarray,
                  rng: np.random.Generator) -> tuple[tuple, np.ndarray]:
    """Replace ``images``' ``mask``ed pixels (in place) by Gaussian sky noise of each stamp's
    ``noise_sigma``: what the network sees of a masked pixel, in training as at inference.
    Returns where they were and their values, to put back."""
    where = np.nonzero(mask)
    values = images[where]
    images[where] = rng.standard_normal(len(values)) * noise_sigma[where[0]]
    return where, values


def neighbours_as_sky(images: np.ndarray, rng: np.random.Generator, bad_pixels: float = 0.0) -> np.ndarray:
    """Training stamps as ``galcae infer`` hands them to the network: segmented as it segments
    them (:func:`segment`, the noise measured on each stamp's border), the other sources'
    pixels replaced by sky noise (:func:`fill_with_sky`); with ``bad_pixels``, that share of
    the stamps also given a detector defect (:func:`bad_pixel_masks`), masked as a user's
    ``MASK`` HDU is. In place; returns ``images``."""
    from ..conditions import stamp_noise_sigma

    sigma = stamp_noise_sigma(images)
    usable = np.isfinite(sigma) & (sigma > 0)
    bad = bad_pixel_masks(len(images), images.shape[-1], bad_pixels, rng) if bad_pixels > 0 else None
    mask = segment(images, sigma, bad, todo=usable).mask
    fill_with_sky(images, mask if bad is None else mask | bad, sigma, rng)
    return images


def bad_pixel_masks(n: int, size: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``(n, size, size)`` bool: a detector defect in a ``fraction`` of ``n`` stamps, placed
    anywhere (so across the galaxy in some), one of, equally often: a bad column (1 or 2 pixels
    wide, the whole stamp or a stretch of 8 pixels or more), a saturated star (a core of radius
    2-5 pixels and its bleed trail along the column) or a cosmic ray (a track 2-8 pixels long).
    The stamps' training augmentation turns columns into rows."""
    out = np.zeros((n, size, size), bool)
    rows, cols = np.mgrid[:size, :size]
    for i in np.flatnonzero(rng.random(n) < fraction):
        kind, x, y = rng.integers(3), rng.uniform(0, size), rng.uniform(0, size)
        if kind == 0:
            length = size if rng.random() < 0.5 else rng.uniform(8, size)
            width = 1 + (rng.random() < 0.2)
            out[i] = (cols >= int(x)) & (cols < int(x) + width) & (np.abs(rows - y) <= length / 2)
        elif kind == 1:
            radius, trail = rng.uniform(2, 5), rng.uniform(5, 20)
            out[i] = np.hypot(cols + 0.5 - x, rows + 0.5 - y) <= radius
            out[i] |= (np.abs(cols + 0.5 - x) <= 0.5) & (np.abs(rows + 0.5 - y) <= radius + trail)
        else:
            length, angle = rng.uniform(2, 8), rng.uniform(0, np.pi)
            steps = np.linspace(0, length, 4 * int(np.ceil(length)) + 1)
            px = np.clip((x + steps * np.cos(angle)).astype(int), 0, size - 1)
            py = np.clip((y + steps * np.sin(angle)).astype(int), 0, size - 1)
            out[i, py, px] = True
    return out


def segment(images: np.ndarray, noise_sigma: np.ndarray, unusable: np.ndarray | None = None,
            todo: np.ndarray | None = None) -> Segmentation:
    """Segment ``(N, H, W)`` sky-subtracted stamps with per-stamp ``noise_sigma`` (ADU);
    ``unusable`` pixels (bool, same shape) are ignored by the detection. Only the stamps
    ``todo`` (bool ``(N,)``; default all) are segmented (the others: nothing masked, NaN
    blendedness, no flag).

    The galaxy is the source at the centre (:func:`_central`); every other source detected is
    masked. Where none is at the centre (a galaxy too faint to detect), every source detected
    is masked and the stamp flagged ``undetected``."""
    with sep_for_stamps(images) as sep:
        return _segment(sep, images, noise_sigma, unusable, todo)


def _segment(sep, images, noise_sigma, unusable, todo) -> Segmentation:
    n, size = len(images), images.shape[-1]
    out = Segmentation(np.zeros(images.shape, bool), np.zeros(n, np.int64), np.full(n, np.nan),
                       np.zeros(n, bool), np.zeros(n, bool),
                       Neighbours(np.zeros(images.shape, np.int16), np.zeros(n, np.int64), {},
                                  None if unusable is None or not unusable.any() else unusable.astype(bool)))
    found = []  # per stamp with neighbours: (stamp, the neighbours' rows of sep's objects, their labels)
    todo = np.ones(n, bool) if todo is None else todo
    images = np.ascontiguousarray(images, np.float32)
    # A stamp's own bad pixels go to sep only where it has any (a mask costs sep time).
    bad = np.zeros(n, bool) if unusable is None else unusable.reshape(n, -1).any(axis=1)
    for i in np.flatnonzero(todo & np.isfinite(noise_sigma) & (noise_sigma > 0)):
        try:
            objects, seg = sep.extract(images[i], DETECT_SIGMA, err=float(noise_sigma[i]),
                                       mask=np.ascontiguousarray(unusable[i]) if bad[i] else None,
                                       minarea=MIN_AREA, segmentation_map=True)
        except Exception:  # noqa: BLE001 -- sep's internal limits (a pathological stamp): none masked
            continue
        central = _central(objects, seg, size)
        out.undetected[i] = central is None
        out.n_neighbours[i] = len(objects) - (central is not None)
        out.blendedness[i] = 0.0 if central is None else _blendedness(objects, central, size)
        label = 0 if central is None else central + 1
        out.neighbours.central[i] = label
        if out.n_neighbours[i]:
            out.neighbours.labels[i] = seg
            others_at = np.flatnonzero(np.arange(len(objects)) != central)
            found.append((i, objects[others_at], others_at + 1))
            others = (seg > 0) & (seg != label)
            grown = ndimage.binary_dilation(others, iterations=GROW) if GROW else others
            out.mask[i] = grown & ((seg != label) | (label == 0))
    out.neighbours.sources = source_rows(found)
    masked = out.mask if unusable is None else out.mask | unusable
    c = size // 2
    box = masked[:, c - CENTRE_BOX - 1:c + CENTRE_BOX, c - CENTRE_BOX - 1:c + CENTRE_BOX]
    out.centre_masked = todo & (box.reshape(n, -1).mean(axis=1) > 0.5)
    return out


def _central(objects: np.ndarray, seg: np.ndarray, size: int) -> int | None:
    """Index in ``objects`` of the stamp's galaxy: the segment under the centre, else the
    detection nearest the centre within :data:`CENTRE_RADIUS`, else None."""
    centre = (size - 1) / 2
    label = seg[int(round(centre)), int(round(centre))]
    if label > 0:
        return int(label) - 1
    if not len(objects):
        return None
    distance = np.hypot(objects["x"] - centre, objects["y"] - centre)
    nearest = int(np.argmin(distance))
    return nearest if distance[nearest] <= CENTRE_RADIUS else None


def _blendedness(objects: np.ndarray, central: int, size: int) -> float:
    """The neighbours' share of the light inside the galaxy's aperture (its 2-sigma ellipse),
    each source modelled as the Gaussian of its flux and second moments."""
    if len(objects) < 2:
        return 0.0
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    c = objects[central]
    inside = _mahalanobis2(c, xx, yy) <= 4.0
    if not inside.any():
        return 0.0
    light = [_gaussian(o, xx[inside], yy[inside]).sum() for o in objects]
    total = float(np.sum(light))
    return float((total - light[central]) / total) if total > 0 else 0.0


def _mahalanobis2(o, xx, yy):
    cxx, cyy, cxy = _covariance(o)
    det = cxx * cyy - cxy ** 2
    dx, dy = xx - o["x"], yy - o["y"]
    return (cyy * dx ** 2 - 2 * cxy * dx * dy + cxx * dy ** 2) / det


def _covariance(o) -> tuple[float, float, float]:
    """Second moments, floored at a quarter pixel² (sep's isophotal moments of a faint source
    can be degenerate)."""
    cxx, cyy, cxy = max(float(o["x2"]), 0.25), max(float(o["y2"]), 0.25), float(o["xy"])
    limit = 0.99 * np.sqrt(cxx * cyy)
    return cxx, cyy, float(np.clip(cxy, -limit, limit))


def _gaussian(o, xx, yy):
    cxx, cyy, cxy = _covariance(o)
    det = cxx * cyy - cxy ** 2
    return max(float(o["flux"]), 0.0) / (2 * np.pi * np.sqrt(det)) * np.exp(-0.5 * _mahalanobis2(o, xx, yy))
