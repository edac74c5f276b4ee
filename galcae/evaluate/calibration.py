"""Are the reported uncertainties right? Coverage of the 68% and 95% intervals on
held-out galaxies, per parameter, overall and in S/N bins (target: within ±3 points)."""

from __future__ import annotations

import numpy as np

from ..uncertainty import LEVELS, coverage
from .metrics import SNR_BINS


def latent_errors(model, images: np.ndarray, conditions: dict | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Supervised latents, their recalibrated 1-sigma from the variance head and the tail
    factors of their 95% intervals."""
    n_sup = len(model.supervised)
    z, log_var = model.encode(images, conditions, log_var=True)
    calibration = model.card.errors.variance  # as galcae infer applies it
    snr = model.stamp_snr(images) if calibration.needs_snr else None
    sigma = calibration.apply(np.exp(0.5 * log_var), snr)
    return z[:, :n_sup], sigma, calibration.tail(sigma)


def calibration_table(names, z_true: np.ndarray, z_pred: np.ndarray, sigma: np.ndarray,
                      snr: np.ndarray, tail=None, edges=SNR_BINS) -> dict:
    """``{name: {subset: {"n", "68", "95"}}}`` coverage fractions (subsets: all, S/N bins) of
    the intervals of :func:`~galcae.uncertainty.half_widths` (``tail``: 1 if not given)."""
    tail = np.ones_like(sigma) if tail is None else tail
    subsets = {"all": np.ones(len(snr), bool)}
    for lo, hi in zip(edges[:-1], edges[1:]):
        subsets[f"snr {lo:g}-{hi:g}"] = (snr >= lo) & (snr < hi)
    out = {name: {} for name in names}
    for label, sel in subsets.items():
        if not sel.any():
            continue
        cov = coverage(z_true[sel], z_pred[sel], sigma[sel], tail[sel])
        for k, name in enumerate(names):
            out[name][label] = {"n": int(sel.sum()),
                                **{f"{round(100 * lv)}": float(cov[lv][k]) for lv in LEVELS}}
    return out


def worst_miss(table: dict, min_n: int = 30) -> float:
    """Largest |coverage - nominal| in percentage points over parameters, subsets with at least
    ``min_n`` galaxies, and both levels."""
    misses = [abs(100 * row[f"{round(100 * lv)}"] - 100 * lv)
              for per_param in table.values() for row in per_param.values() if row["n"] >= min_n
              for lv in LEVELS]
    return float(max(misses)) if misses else float("nan")
