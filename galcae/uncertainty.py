"""1-sigma uncertainties of predicted parameters, and how well they are calibrated.

Three methods, named in every catalog's metadata:

- ``nll``: the model's own per-galaxy variance head (trained with a Gaussian negative
  log-likelihood), times a scale fitted on the held-out split at the end of training so
  that 68.27% of held-out truths fall within 1 sigma (a post-hoc recalibration, Kuleshov
  et al. 2018). The scale is fitted in quantile bins of the predicted sigma, so a head
  that is right at high S/N and too confident at low S/N is corrected at both, then a
  second factor in quantile bins of the S/N measured on the stamp, so that the coverage
  holds per S/N bin too; the default for models that have the head. The pulls are not
  Gaussian (the ±2 pixel prior on x, y makes light tails where sigma is large, g2 has
  heavy ones where it is small), so one sigma cannot place both intervals: the 95%
  interval gets its own factor per quantile bin of the recalibrated sigma (the *tail*),
  and catalogs state its ends (``<name>_lo95``, ``<name>_hi95``).

- ``heldout``: the robust scatter (astropy ``mad_std``) of the held-out residuals,
  measured at the end of training in bins of the predicted value and stored in
  ``model.json``. It is the population error of galaxies predicted at that value, not a
  per-galaxy posterior width, and works for every model.
- ``mc_dropout``: the spread of K forward passes with dropout active (Gal & Ghahramani
  2016), as the paper suggests; needs a model trained with ``dropout > 0``. With a
  variance head the two add (``nll+mc_dropout``): noise plus model uncertainty.

Calibration (:func:`coverage`) is the fraction of truths inside the central 68% and
95% intervals (Gaussian, the 95% one times the tail factor where there is one), measured
in the latent space where the Gaussian is modelled (log10 for log-scaled parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.special import ndtr, ndtri  # the normal's cdf and ppf (scipy.stats takes 1.5 s to import)

from .scaling import ParameterScaling


@dataclass(frozen=True)
class HeldoutScatter:
    """Per supervised latent: bin edges in predicted value and the residual scatter in each bin."""

    edges: tuple[tuple[float, ...], ...]
    sigma: tuple[tuple[float, ...], ...]

    @classmethod
    def fit(cls, z_pred: np.ndarray, z_true: np.ndarray, per_bin: int = 20) -> "HeldoutScatter":
        """Quantile bins of the predictions holding about ``per_bin`` galaxies each (at least one bin)."""
        from astropy.stats import mad_std  # at training's end only: 0.3 s every measuring process need not pay

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
    factor in each of those bins; then (since the tail stage) edges in ``log`` of the
    recalibrated sigma and the factor on the Gaussian 95% half-width that puts 95% of the
    truths inside it."""

    edges: tuple[tuple[float, ...], ...]
    scale: tuple[tuple[float, ...], ...]
    snr_edges: tuple[tuple[float, ...], ...] = ()
    snr_scale: tuple[tuple[float, ...], ...] = ()
    tail_edges: tuple[tuple[float, ...], ...] = ()
    tail_scale: tuple[tuple[float, ...], ...] = ()

    @classmethod
    def fit(cls, z_true: np.ndarray, z_pred: np.ndarray, sigma: np.ndarray, snr: np.ndarray | None = None,
            per_bin: int = 300) -> "VarianceCalibration":
        """Bins of about ``per_bin`` held-out galaxies: the 68% quantile of a few hundred pulls
        is good to about ±3 points of coverage. ``snr`` (the stamps' :func:`stamp_snr`) adds
        the S/N stage, fitted on the pulls the first stage leaves; the tail stage is fitted
        on the pulls the others leave."""
        out = cls(*_binned_scales(np.log(sigma), z_true, z_pred, sigma, per_bin, _one_sigma_quantile))
        if snr is not None:
            key = _snr_key(snr)[:, None].repeat(sigma.shape[1], 1)
            edges, scale = _binned_scales(key, z_true, z_pred, out.apply(sigma), per_bin, _one_sigma_quantile)
            out = replace(out, snr_edges=edges, snr_scale=scale)
        # Bins of the recalibrated sigma tell prior-bounded estimates (light tails) from
        # noise-dominated ones better than S/N does: on 10,000 fresh survey galaxies
        # (benchmarks/survey_model.py --n 10000) the worst miss per S/N bin was 2.7 points,
        # against 3.4 with the tail binned in S/N.
        calibrated = out.apply(sigma, snr)
        edges, scale = _binned_scales(np.log(calibrated), z_true, z_pred, calibrated, per_bin, _tail_factor)
        return replace(out, tail_edges=edges, tail_scale=scale)

    @classmethod
    def from_meta(cls, meta: dict, n_supervised: int) -> "VarianceCalibration":
        """From ``model.json``; a model saved with one ``variance_scale`` per parameter (or
        none) gets a single bin."""
        if "variance_calibration" in meta:
            return cls.from_dict(meta["variance_calibration"])
        scale = meta.get("variance_scale", [1.0] * n_supervised)
        return cls(tuple((0.0, 0.0) for _ in scale), tuple((float(v),) for v in scale))

    @classmethod
    def from_dict(cls, data: dict) -> "VarianceCalibration":
        return cls(*(tuple(map(tuple, data.get(k, ())))
                     for k in ("edges", "scale", "snr_edges", "snr_scale", "tail_edges", "tail_scale")))

    def to_dict(self) -> dict:
        out = {"edges": [list(e) for e in self.edges], "scale": [list(s) for s in self.scale]}
        if self.snr_edges:
            out.update(snr_edges=[list(e) for e in self.snr_edges], snr_scale=[list(s) for s in self.snr_scale])
        if self.tail_edges:
            out.update(tail_edges=[list(e) for e in self.tail_edges], tail_scale=[list(s) for s in self.tail_scale])
        return out

    @property
    def needs_snr(self) -> bool:
        return bool(self.snr_edges)

    def apply(self, sigma: np.ndarray, snr: np.ndarray | None = None) -> np.ndarray:
        """The recalibrated ``(N, n_supervised)`` sigma; ``snr`` (of each stamp) is needed
        when :attr:`needs_snr` (a stamp whose S/N is not finite gets the first stage only)."""
        out = sigma * _factors(self.edges, self.scale, np.log(sigma))
        if not self.needs_snr:
            return out
        if snr is None:
            raise ValueError("this recalibration needs the S/N of each stamp")
        snr = np.asarray(snr, float)
        known = np.isfinite(snr)
        key = _snr_key(np.where(known, snr, 1.0))[:, None].repeat(sigma.shape[1], 1)
        return out * np.where(known[:, None], _factors(self.snr_edges, self.snr_scale, key), 1.0)

    def tail(self, sigma: np.ndarray) -> np.ndarray:
        """Factors on the Gaussian 95% half-widths of :meth:`apply`'s ``(N, n_supervised)``
        ``sigma``; 1 for a calibration fitted before the tail stage."""
        if not self.tail_edges:
            return np.ones(np.shape(sigma))
        return _factors(self.tail_edges, self.tail_scale, np.log(sigma))


def _factors(edges, factors, key: np.ndarray) -> np.ndarray:
    """``(N, n_supervised)``: per column ``k``, the factor of the bin of ``key[:, k]`` among
    ``edges[k]``."""
    return np.stack([np.asarray(f)[bin_index(e, key[:, k])] for k, (e, f) in enumerate(zip(edges, factors))], 1)


def _snr_key(snr: np.ndarray) -> np.ndarray:
    """log S/N, the faintest stamps (measured S/N 0) at 0.1."""
    return np.log(np.clip(snr, 0.1, None))


def _binned_scales(key: np.ndarray, z_true, z_pred, sigma, per_bin: int, factor) -> tuple[tuple, tuple]:
    """Per column of ``key``: quantile-bin edges and ``factor(|pulls|)`` in each."""
    pulls = np.abs((np.asarray(z_true, float) - z_pred) / sigma)
    # As many bins as the data fill: the bin size sets the precision of each factor.
    fitted = [binned_statistic(key[:, k], pulls[:, k], factor, per_bin, max_bins=len(key))
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


#: Central probability of the intervals whose coverage is reported; a tail factor widens
#: the second.
LEVELS = (0.68, 0.95)


def half_widths(sigma: np.ndarray, tail=1.0) -> dict:
    """``{level: half-width}`` of the central intervals: Gaussian, the 95% one times ``tail``."""
    sigma = np.asarray(sigma, float)
    return {LEVELS[0]: ndtri(0.5 + LEVELS[0] / 2) * sigma,
            LEVELS[1]: ndtri(0.5 + LEVELS[1] / 2) * sigma * tail}


def coverage(z_true: np.ndarray, z_pred: np.ndarray, sigma: np.ndarray, tail=1.0) -> dict:
    """Fraction of rows whose truth lies within the central intervals of :func:`half_widths`
    around ``z_pred`` (columns: one value per parameter)."""
    miss = np.abs(np.asarray(z_true, float) - z_pred)
    return {level: np.mean(miss <= w, axis=0) for level, w in half_widths(sigma, tail).items()}


def _one_sigma_quantile(pulls: np.ndarray) -> float:
    """The factor on sigma that puts 68.27% of ``pulls`` (|residual| / sigma) inside 1 sigma."""
    return float(np.quantile(pulls, ndtr(1.0) - ndtr(-1.0)))


def _tail_factor(pulls: np.ndarray) -> float:
    """The factor on the Gaussian 95% half-width that puts 95% of ``pulls`` inside it."""
    return float(np.quantile(pulls, LEVELS[1]) / ndtri(0.5 + LEVELS[1] / 2))
