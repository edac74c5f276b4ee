"""1-sigma uncertainties of predicted parameters, and how well they are calibrated.

Three methods, named in every catalog's metadata:

- ``nll``: the model's own per-galaxy variance head (trained with a Gaussian negative
  log-likelihood), times a scale fitted on the held-out split at the end of training so
  that 68.27% of held-out truths fall within 1 sigma (a post-hoc recalibration, Kuleshov
  et al. 2018). The scale is fitted in quantile bins of the predicted sigma, so a head
  that is right at high S/N and too confident at low S/N is corrected at both, then a
  second factor in quantile bins of the S/N measured on the stamp, so that the coverage
  holds per S/N bin too; the default for models that have the head.

- ``heldout``: the robust scatter (astropy ``mad_std``) of the held-out residuals,
  measured at the end of training in bins of the predicted value and stored in
  ``model.json``. It is the population error of galaxies predicted at that value, not a
  per-galaxy posterior width, and works for every model.
- ``mc_dropout``: the spread of K forward passes with dropout active (Gal & Ghahramani
  2016), as the paper suggests; needs a model trained with ``dropout > 0``. With a
  variance head the two add (``nll+mc_dropout``): noise plus model uncertainty.

Calibration (:func:`coverage`) is the fraction of truths inside the central 68% and
95% Gaussian intervals, measured in the latent space where the Gaussian is modelled
(log10 for log-scaled parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.stats import mad_std
from scipy.stats import norm

from .scaling import ParameterScaling


@dataclass(frozen=True)
class HeldoutScatter:
    """Per supervised latent: bin edges in predicted value and the residual scatter in each bin."""

    edges: tuple[tuple[float, ...], ...]
    sigma: tuple[tuple[float, ...], ...]

    @classmethod
    def fit(cls, z_pred: np.ndarray, z_true: np.ndarray, per_bin: int = 20) -> "HeldoutScatter":
        """Quantile bins of the predictions holding about ``per_bin`` galaxies each (at least one bin)."""
        edges, sigma = [], []
        for k in range(z_pred.shape[1]):
            residual = z_pred[:, k] - z_true[:, k]
            e, s = binned_statistic(z_pred[:, k], residual, lambda r: float(mad_std(r)), per_bin)
            edges.append(e)
            sigma.append(s)
        return cls(tuple(edges), tuple(sigma))

    @classmethod
    def from_dict(cls, data: dict) -> "HeldoutScatter":
        return cls(tuple(map(tuple, data["edges"])), tuple(map(tuple, data["sigma"])))

    def to_dict(self) -> dict:
        return {"edges": [list(e) for e in self.edges], "sigma": [list(s) for s in self.sigma]}

    def latent_sigma(self, z_pred: np.ndarray) -> np.ndarray:
        """``(N, n_supervised)`` 1-sigma in latent units; beyond the outer bins the end bin's value."""
        out = np.empty(z_pred.shape, dtype=float)
        for k, (e, s) in enumerate(zip(self.edges, self.sigma)):
            out[:, k] = np.asarray(s)[bin_index(e, z_pred[:, k])]
        return out


def binned_statistic(key: np.ndarray, sample: np.ndarray, statistic, per_bin: int, max_bins: int = 10
                     ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Edges of quantile bins of ``key`` holding about ``per_bin`` rows each (1 to ``max_bins``
    bins) and ``statistic(sample)`` in each; a bin of fewer than 3 rows gets the overall value."""
    n_bins = max(1, min(max_bins, len(key) // per_bin))
    edges = np.quantile(key, np.linspace(0.0, 1.0, n_bins + 1))
    which = bin_index(edges, key)
    overall = statistic(sample)
    values = [statistic(sample[which == b]) if np.sum(which == b) > 2 else overall
              for b in range(n_bins)]
    return tuple(float(v) for v in edges), tuple(float(v) for v in values)


def bin_index(edges, key: np.ndarray) -> np.ndarray:
    """The bin of each ``key`` among ``len(edges) - 1`` bins; beyond the ends, the end bins."""
    return np.clip(np.searchsorted(edges, key, side="right") - 1, 0, max(len(edges) - 2, 0))


@dataclass(frozen=True)
class VarianceCalibration:
    """Per supervised latent: bin edges in ``log(sigma)`` of the variance head and the factor
    on sigma in each bin that puts 68.27% of held-out truths within 1 sigma there; then
    (models calibrated since the S/N stage) edges in ``log(snr)`` of the stamp and a second
    factor in each of those bins."""

    edges: tuple[tuple[float, ...], ...]
    scale: tuple[tuple[float, ...], ...]
    snr_edges: tuple[tuple[float, ...], ...] = ()
    snr_scale: tuple[tuple[float, ...], ...] = ()

    @classmethod
    def fit(cls, z_true: np.ndarray, z_pred: np.ndarray, sigma: np.ndarray, snr: np.ndarray | None = None,
            per_bin: int = 300) -> "VarianceCalibration":
        """Bins of about ``per_bin`` held-out galaxies: the 68% quantile of a few hundred pulls
        is good to about ±3 points of coverage. ``snr`` (the stamps' :func:`stamp_snr`) adds
        the S/N stage, fitted on the pulls the first stage leaves."""
        first = cls(*_binned_scales(np.log(sigma), z_true, z_pred, sigma, per_bin))
        if snr is None:
            return first
        key = _snr_key(snr)[:, None].repeat(sigma.shape[1], 1)
        return cls(first.edges, first.scale, *_binned_scales(key, z_true, z_pred, first.apply(sigma), per_bin))

    @classmethod
    def from_meta(cls, meta: dict, n_supervised: int) -> "VarianceCalibration":
        """From ``model.json``; a model saved with one ``variance_scale`` per parameter (or
        none) gets a single bin."""
        if "variance_calibration" in meta:
            data = meta["variance_calibration"]
            return cls(*(tuple(map(tuple, data.get(k, ()))) for k in ("edges", "scale", "snr_edges", "snr_scale")))
        scale = meta.get("variance_scale", [1.0] * n_supervised)
        return cls(tuple((0.0, 0.0) for _ in scale), tuple((float(v),) for v in scale))

    def to_dict(self) -> dict:
        out = {"edges": [list(e) for e in self.edges], "scale": [list(s) for s in self.scale]}
        if self.snr_edges:
            out.update(snr_edges=[list(e) for e in self.snr_edges], snr_scale=[list(s) for s in self.snr_scale])
        return out

    @property
    def needs_snr(self) -> bool:
        return bool(self.snr_edges)

    def apply(self, sigma: np.ndarray, snr: np.ndarray | None = None) -> np.ndarray:
        """The recalibrated ``(N, n_supervised)`` sigma; ``snr`` (of each stamp) is needed
        when :attr:`needs_snr` (a stamp whose S/N is not finite gets the first stage only)."""
        out = np.empty(sigma.shape, dtype=float)
        for k, (e, s) in enumerate(zip(self.edges, self.scale)):
            out[:, k] = sigma[:, k] * np.asarray(s)[bin_index(e, np.log(sigma[:, k]))]
        if not self.needs_snr:
            return out
        if snr is None:
            raise ValueError("this recalibration needs the S/N of each stamp")
        snr = np.asarray(snr, float)
        known = np.isfinite(snr)
        key = _snr_key(snr[known])
        for k, (e, s) in enumerate(zip(self.snr_edges, self.snr_scale)):
            out[known, k] *= np.asarray(s)[bin_index(e, key)]
        return out


def _snr_key(snr: np.ndarray) -> np.ndarray:
    """log S/N, the faintest stamps (measured S/N 0) at 0.1."""
    return np.log(np.clip(snr, 0.1, None))


def _binned_scales(key: np.ndarray, z_true, z_pred, sigma, per_bin: int) -> tuple[tuple, tuple]:
    """Per column of ``key``: quantile-bin edges and the 1-sigma factor of the pulls in each."""
    pulls = np.abs((np.asarray(z_true, float) - z_pred) / sigma)
    fitted = [binned_statistic(key[:, k], pulls[:, k], _one_sigma_quantile, per_bin)
              for k in range(pulls.shape[1])]
    return tuple(e for e, _ in fitted), tuple(s for _, s in fitted)


def physical_sigma(scaling: ParameterScaling, z_pred: np.ndarray, sigma_z: np.ndarray) -> dict:
    """Propagate latent 1-sigma to physical units (first order: log10 axes scale with the value)."""
    values = scaling.to_physical(z_pred)
    out = {}
    for k, (name, log, std) in enumerate(zip(scaling.names, scaling.log, scaling.std)):
        factor = std * (np.log(10.0) * values[name] if log else 1.0)
        out[name] = sigma_z[:, k] * factor
    return out


#: Central probability of the intervals whose coverage is reported.
LEVELS = (0.68, 0.95)


def coverage(z_true: np.ndarray, z_pred: np.ndarray, sigma: np.ndarray, levels=LEVELS) -> dict:
    """Fraction of rows whose truth lies within the central ``level`` Gaussian interval
    ``z_pred ± norm.ppf((1 + level) / 2) * sigma`` (columns: one value per parameter)."""
    pulls = np.abs((np.asarray(z_true, float) - z_pred) / sigma)
    return {level: np.mean(pulls <= norm.ppf(0.5 + level / 2), axis=0) for level in levels}


def _one_sigma_quantile(pulls: np.ndarray) -> float:
    """The factor on sigma that puts 68.27% of ``pulls`` (|residual| / sigma) inside 1 sigma."""
    return float(np.quantile(pulls, norm.cdf(1.0) - norm.cdf(-1.0)))
