"""Realistic galaxy populations: joint shapes from real galaxies, a flux distribution, bulges.

``simulate: population: kind: cosmos`` draws each galaxy's Sérsic index, half-light radius
and ellipticity *jointly* from the single-Sérsic fits of 276 HST/COSMOS galaxies
(``galcae/data/cosmos_sersic_fits.asc``), smoothed by a Gaussian kernel so that a large
training set is not 276 shapes repeated, and kept inside the config's ``ranges``. Real
galaxies cluster near n ≈ 1 with a tail to n ≈ 4, and n, r½ and |g| are correlated; a
uniform prior over each range has neither. Flux follows a power law in the number counts,
``dN/dlnF ∝ F^-flux_slope`` inside ``ranges.flux``.

A ``bulge_fraction`` of the galaxies are a bulge plus an exponential disk
(:func:`draw_bulges`). Such a galaxy's *supervised* parameters (``flux``,
``half_light_radius``, ``sersic_n``, ``g1``, ``g2``, ``x``, ``y``) are defined as those of
the single-Sérsic maximum-likelihood fit of its noiseless image, through its PSF and with its
noise model (:func:`single_sersic_equivalent`): what galcae's refinement measures on the
same galaxy, so that the network and the refinement estimate one thing. Its components stay
in the truth table (``disk_*``, ``bulge_*``, ``bulge_to_total``).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

#: The columns of a bulge + disk galaxy's components in the truth table: the disk's own
#: (an exponential, n = 1; it holds ``1 - bulge_to_total`` of ``flux_total``) and the bulge's.
DISK_COLUMNS = ("disk_half_light_radius", "disk_ellipticity", "disk_position_angle")
BULGE_COLUMNS = ("bulge_to_total", "bulge_half_light_radius", "bulge_sersic_n", "bulge_ellipticity",
                 "bulge_position_angle")
#: The total flux of every galaxy, kept where ``flux`` becomes the single-Sérsic equivalent's.
TOTAL_FLUX = "flux_total"


@lru_cache(maxsize=1)
def cosmos_shapes() -> np.ndarray:
    """``(276, 3)``: Sérsic n, half-light radius (arcsec) and |g| of the COSMOS fits."""
    with resources.files("galcae").joinpath("data", "cosmos_sersic_fits.asc").open() as f:
        table = np.loadtxt(f)
    return table[:, 1:4].copy()


def _features(shapes: np.ndarray) -> np.ndarray:
    """The space in which shapes are smoothed: log n, log r½ and |g|."""
    return np.stack([np.log(shapes[:, 0]), np.log(shapes[:, 1]), shapes[:, 2]], axis=1)


def draw_shapes(rng: np.random.Generator, n: int, ranges, smoothing: float) -> dict[str, np.ndarray]:
    """``sersic_n``, ``half_light_radius`` and ``ellipticity`` of ``n`` galaxies: COSMOS rows
    picked at random, each moved by a Gaussian kernel of ``smoothing`` times Scott's
    bandwidth (in log n, log r½, |g|), and drawn again until inside ``ranges``."""
    features = _features(cosmos_shapes())
    width = smoothing * len(features) ** (-1.0 / 7.0) * features.std(axis=0)  # Scott, 3 dimensions
    lo = np.array([np.log(ranges.sersic_n[0]), np.log(ranges.half_light_radius[0]), ranges.ellipticity[0]])
    hi = np.array([np.log(ranges.sersic_n[1]), np.log(ranges.half_light_radius[1]), ranges.ellipticity[1]])
    inside_any = np.all((features >= lo) & (features <= hi), axis=1)
    if not inside_any.any():
        raise ValueError("no COSMOS galaxy lies inside ranges.sersic_n, half_light_radius and ellipticity")
    out = np.empty((n, 3))
    missing = np.arange(n)
    for _ in range(1000):
        picked = features[rng.integers(len(features), size=len(missing))]
        moved = picked + rng.normal(size=picked.shape) * width
        moved[:, 2] = np.abs(moved[:, 2])  # |g| reflected at 0
        good = np.all((moved >= lo) & (moved <= hi), axis=1)
        out[missing[good]] = moved[good]
        missing = missing[~good]
        if not len(missing):
            break
    else:
        raise ValueError("ranges.sersic_n, half_light_radius and ellipticity hold too little of the COSMOS "
                         "population to draw from")
    return {"sersic_n": np.exp(out[:, 0]), "half_light_radius": np.exp(out[:, 1]), "ellipticity": out[:, 2]}


def draw_flux(rng: np.random.Generator, n: int, bounds: tuple[float, float], slope: float) -> np.ndarray:
    """``n`` fluxes with ``dN/dlnF ∝ F^-slope`` on ``bounds`` (slope 0: log-uniform), by the
    inverse of its cumulative distribution."""
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    u = rng.uniform(size=n)
    if abs(slope) < 1e-9 or hi == lo:
        return np.exp(lo + u * (hi - lo))
    a, b = np.exp(-slope * lo), np.exp(-slope * hi)
    return np.exp(-np.log(a + u * (b - a)) / slope)


def draw_bulges(rng: np.random.Generator, spec, table: dict) -> dict[str, np.ndarray]:
    """The components of a ``spec.bulge_fraction`` of the galaxies of ``table`` (whose drawn
    ``half_light_radius``, ``ellipticity`` and ``position_angle`` become their disk's, and
    ``sersic_n`` 1): a bulge of ``bulge_to_total`` of the flux, its r½ a log-uniform
    ``bulge_size`` times the disk's, its n, |g| drawn over their ranges, its major axis
    within ``±bulge_misalignment`` degrees of the disk's. Other rows get
    ``bulge_to_total`` 0 and NaN components."""
    n = len(table["flux"])
    bulgy = rng.random(n) < spec.bulge_fraction
    size = np.exp(rng.uniform(*np.log(spec.bulge_size), n))
    out = {
        "bulge_to_total": np.where(bulgy, rng.uniform(*spec.bulge_to_total, n), 0.0),
        "bulge_half_light_radius": table["half_light_radius"] * size,
        "bulge_sersic_n": rng.uniform(*spec.bulge_sersic_n, n),
        "bulge_ellipticity": rng.uniform(*spec.bulge_ellipticity, n),
        "bulge_position_angle": (table["position_angle"]
                                 + rng.uniform(-1, 1, n) * spec.bulge_misalignment) % 180.0,
        "disk_half_light_radius": table["half_light_radius"].copy(),
        "disk_ellipticity": table["ellipticity"].copy(),
        "disk_position_angle": table["position_angle"].copy(),
    }
    for name in (*BULGE_COLUMNS[1:], *DISK_COLUMNS):
        out[name] = np.where(bulgy, out[name], np.nan)
    out["sersic_n"] = np.where(bulgy, 1.0, table["sersic_n"])
    return out


def has_bulge(row: dict) -> bool:
    """Whether a truth-table row is a bulge + disk galaxy."""
    return float(row.get("bulge_to_total", 0.0) or 0.0) > 0.0


def components(row: dict) -> list[dict]:
    """The Sérsic components of a bulge + disk row: ``flux``, ``half_light_radius``,
    ``sersic_n``, ``ellipticity`` and ``position_angle`` of the disk, then of the bulge."""
    total = float(row.get(TOTAL_FLUX, row["flux"]))
    bulge = float(row["bulge_to_total"])
    return [
        {"flux": total * (1 - bulge), "half_light_radius": row["disk_half_light_radius"], "sersic_n": 1.0,
         "ellipticity": row["disk_ellipticity"], "position_angle": row["disk_position_angle"]},
        {"flux": total * bulge, "half_light_radius": row["bulge_half_light_radius"],
         "sersic_n": row["bulge_sersic_n"], "ellipticity": row["bulge_ellipticity"],
         "position_angle": row["bulge_position_angle"]},
    ]


#: Steps of the fit that defines a bulge + disk galaxy's single-Sérsic parameters: its start
#: (the disk's shape, the total flux) is further from the optimum than the CAE's is.
EQUIVALENT_STEPS = 60


def single_sersic_equivalent(cfg, rows: dict[str, np.ndarray], noiseless: np.ndarray) -> dict[str, np.ndarray]:
    """The supervised parameters of bulge + disk galaxies: the single-Sérsic
    maximum-likelihood fit (:func:`galcae.estimate.batchfit.fit_batch`) of their ``(N, H, W)``
    noiseless images through their own PSF, weighted by their own noise model. Returns
    :data:`~galcae.params.FIT_PARAMETERS` and ``status`` (``ok``, or why the fit failed)."""
    from .estimate.batchfit import fit_batch
    from .params import MAX_NFEV, OK, shear_from_ellipticity

    bulge = np.asarray(rows["bulge_to_total"], float)
    g1, g2 = shear_from_ellipticity(rows["disk_ellipticity"], rows["disk_position_angle"])
    guess = {
        "flux": np.asarray(rows[TOTAL_FLUX], float),
        # the flux-weighted mean of the components' log radii, and an n that grows with the bulge
        "half_light_radius": np.exp((1 - bulge) * np.log(rows["disk_half_light_radius"])
                                    + bulge * np.log(rows["bulge_half_light_radius"])),
        "sersic_n": 1.0 + 2.5 * bulge,
        "g1": g1 * (1 - bulge), "g2": g2 * (1 - bulge),
        "x": np.asarray(rows["x"], float), "y": np.asarray(rows["y"], float),
    }
    conditions = {k: np.asarray(rows[k], float) for k in ("psf_fwhm", "psf_beta", "sky_level")}
    fit = fit_batch(noiseless, cfg, conditions, guess, max_steps=EQUIVALENT_STEPS, tolerance=1e-4)
    status = np.asarray(fit["status"]).astype(object)
    bad = ~np.isin(status, (OK, MAX_NFEV))
    status[bad] = [f"failed: single-Sérsic equivalent of the bulge + disk ({s})" for s in status[bad]]
    status[~bad] = OK
    out = {k: np.asarray(fit[k], float) for k in guess}
    out["status"] = status.astype(str)
    return out
