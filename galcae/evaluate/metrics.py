"""Accuracy metrics: R², bias and robust scatter of relative errors, overall and in S/N bins."""

from __future__ import annotations

import numpy as np
from astropy.stats import mad_std
from sklearn.metrics import r2_score

#: S/N bin edges used in every report.
SNR_BINS = (0.0, 10.0, 30.0, 100.0, np.inf)


def r2(true, predicted) -> float:
    """Coefficient of determination of ``predicted`` for ``true`` (1 is perfect, can be < 0)."""
    return float(r2_score(np.asarray(true, float), np.asarray(predicted, float)))


def r2_log10(true, predicted) -> float:
    """R² of log10 values. A linearly scaled latent can predict <= 0 for the faintest
    galaxies; those count at half the smallest true value (a large, finite error)."""
    true = np.asarray(true, float)
    floor = true.min() / 2.0
    return r2(np.log10(true), np.log10(np.clip(np.asarray(predicted, float), floor, None)))


def error_summary(true, predicted) -> dict:
    """Bias (median) and robust scatter (``mad_std``) of the relative error ``pred/true - 1``."""
    rel = np.asarray(predicted, float) / np.asarray(true, float) - 1.0
    if rel.size == 0:
        return {"n": 0, "bias": None, "scatter": None}
    return {"n": int(rel.size), "bias": float(np.median(rel)), "scatter": float(mad_std(rel))}


def binned_error_summary(true, predicted, snr, edges=SNR_BINS) -> list[dict]:
    """:func:`error_summary` in bins of S/N, one dict per bin with its edges."""
    true, predicted, snr = (np.asarray(a, float) for a in (true, predicted, snr))
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (snr >= lo) & (snr < hi)
        rows.append({"snr_min": lo, "snr_max": None if np.isinf(hi) else hi,
                     **error_summary(true[sel], predicted[sel])})
    return rows
