"""CAE, PCA + linear regression and the classical fit on the same galaxies, against the
Cramér–Rao bound: bias, robust scatter, outliers, R², efficiency, failures, time.

Errors are relative (``pred/true - 1``) for flux, radius and n, absolute for g1, g2, x, y
(whose truth crosses zero). Efficiency is ``1 / mad_std((pred - true) / sigma_CRB)``: the
bound over the observed scatter, galaxy by galaxy, so 1 is the physical limit whatever
the mix of galaxies in a bin.
"""

from __future__ import annotations

import time

import numpy as np
from astropy.stats import mad_std

from ..config import SimConfig
from ..distributed import map_ordered
from ..estimate.crb import cramer_rao
from ..estimate.fit import fit_images
from ..params import FIT_PARAMETERS, OK, RENDER_CONDITIONS
from ..physics import make_psf
from .metrics import SNR_BINS, r2

RELATIVE = ("flux", "half_light_radius", "sersic_n")
#: Per-galaxy observing conditions a truth table carries for rendering, fits and bounds.


def crb_table(cfg: SimConfig, truth: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """sigma_CRB of every parameter for every galaxy of a truth table (which holds the
    galaxies' ``psf_fwhm``, ``psf_beta`` and ``sky_level`` where ``cfg`` draws them)."""
    psf = None if cfg.varies_conditions else make_psf(cfg)
    rows = []
    for i in range(len(truth["flux"])):
        row = {n: float(v[i]) for n, v in truth.items()}
        galaxy_cfg = cfg.for_galaxy(row) if cfg.varies_conditions else cfg
        rows.append(cramer_rao(galaxy_cfg, {n: row[n] for n in FIT_PARAMETERS}, psf=psf))
    return {n: np.array([r[n] for r in rows]) for n in FIT_PARAMETERS}


def _fit_and_bound(cfg: SimConfig, images: np.ndarray, truth: dict[str, np.ndarray]) -> dict:
    """One block: the classical fits of ``images`` (timed per fit) and the CRB of their truth."""
    conditions = {k: truth[k] for k in RENDER_CONDITIONS} if cfg.varies_conditions else None
    fits = fit_images(images, cfg, conditions=conditions)
    return {**fits, **{f"crb_{n}": v for n, v in crb_table(cfg, truth).items()}}


def classical_fits(cfg: SimConfig, images: np.ndarray, truth: dict[str, np.ndarray], workers: int = 1,
                   block: int = 4) -> tuple[dict, dict, float]:
    """Fit every image and bound every truth row, in blocks on ``workers`` processes.

    Returns the fit columns, the CRB columns and the wall seconds of the whole.
    """
    start = time.perf_counter()
    blocks = [(cfg, images[i:i + block], {n: v[i:i + block] for n, v in truth.items()})
              for i in range(0, len(images), block)]
    results = map_ordered(_fit_and_bound, blocks, workers, desc="classical fits + CRB",
                          unit_scale=[len(b[1]) for b in blocks])
    seconds = time.perf_counter() - start
    merged = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
    crb = {n: merged.pop(f"crb_{n}") for n in FIT_PARAMETERS}
    return merged, crb, seconds


def error_of(name: str, true, predicted) -> np.ndarray:
    true, predicted = np.asarray(true, float), np.asarray(predicted, float)
    return predicted / true - 1.0 if name in RELATIVE else predicted - true


def summary(name: str, true, predicted, crb) -> dict:
    """Bias, robust scatter, outlier fraction, R² and efficiency of one method on one set."""
    ok = np.isfinite(predicted)
    err = error_of(name, true[ok], predicted[ok])
    if err.size < 3:
        return {"n": int(err.size)}
    scatter = float(mad_std(err))
    pulls = (np.asarray(predicted[ok], float) - true[ok]) / crb[ok]
    pull_scatter = float(mad_std(pulls[np.isfinite(pulls)]))
    return {"n": int(err.size), "bias": float(np.median(err)), "scatter": scatter,
            "outliers": float(np.mean(np.abs(err) > 3 * scatter)) if scatter > 0 else 0.0,
            "r2": r2(true[ok], predicted[ok]),
            "efficiency": 1.0 / pull_scatter if pull_scatter > 0 else None}


def compare(truth: dict[str, np.ndarray], snr: np.ndarray, crb: dict[str, np.ndarray],
            estimates: dict[str, dict[str, np.ndarray]]) -> dict:
    """Per method and parameter: overall, per S/N bin, and for n > 3 vs n <= 3."""
    subsets = {"all": np.ones(len(snr), bool)}
    for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:]):
        subsets[f"snr {lo:g}-{hi:g}"] = (snr >= lo) & (snr < hi)
    subsets["snr > 20"] = snr > 20
    subsets["n <= 3"] = truth["sersic_n"] <= 3
    subsets["n > 3"] = truth["sersic_n"] > 3
    out = {}
    for method, values in estimates.items():
        out[method] = {name: {label: summary(name, truth[name][sel], values[name][sel], crb[name][sel])
                              for label, sel in subsets.items()}
                       for name in values if name in FIT_PARAMETERS}
    return out


def fit_failures(status: np.ndarray) -> dict:
    return {"n": int(len(status)), "failed": int(np.sum(status != OK)),
            "statuses": {s: int(np.sum(status == s)) for s in np.unique(status)}}


def crb_only(cfg: SimConfig, truth: dict[str, np.ndarray], workers: int = 1,
             block: int = 16) -> dict[str, np.ndarray]:
    """:func:`crb_table` of many galaxies, in blocks on ``workers`` processes."""
    n = len(truth["flux"])
    blocks = [(cfg, {k: v[i:i + block] for k, v in truth.items()}) for i in range(0, n, block)]
    results = map_ordered(crb_table, blocks, workers, desc="Cramér-Rao bounds",
                          unit_scale=[len(b[1]["flux"]) for b in blocks])
    return {k: np.concatenate([r[k] for r in results]) for k in FIT_PARAMETERS}
