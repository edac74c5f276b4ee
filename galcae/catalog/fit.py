"""``galcae fit``: the classical maximum-likelihood fit (:mod:`galcae.estimate.fit`) of every
stamp of the inputs, into a catalog by the same machinery as ``galcae infer``."""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa

from ..config import SimConfig, to_dict
from ..estimate.fit import OK, fit_images
from ..estimate.neighbours import neighbour_light, propagated_covariance
from ..estimate.stellarity import STAR_FLAG, STELLARITY_COLUMNS
from ..params import FIT_PARAMETERS, unit_of
from ..physics import psf_rows, sky_level_for_sigma
from .chunks import build_catalog
from .segment import SEGMENT_COLUMNS, SEGMENT_FLAGS, mask_neighbours
from .stamps import STAMP_FLAGS, clean
from .stars import stellarity
from .writers import Column, catalog_path, flag_columns, id_columns, write_part

#: Per-row flags of a classical-fit catalog.
FLAGS = {**STAMP_FLAGS, **SEGMENT_FLAGS, "flag_fit_failed": "the fit did not converge or failed (see status)"}


def catalog_columns(has_field: bool) -> list[Column]:
    cols = id_columns(has_field)
    for name in FIT_PARAMETERS:
        unit = unit_of(name)
        cols += [(name, pa.float64(), unit, f"fitted {name.replace('_', ' ')}"),
                 (f"{name}_err", pa.float64(), unit, f"1-sigma error of {name} from the fit's Hessian")]
    cols += [("status", pa.string(), "", "'ok', 'max_nfev' or why the fit failed"),
             ("nfev", pa.int64(), "", "model evaluations"),
             ("chi2_dof", pa.float64(), "", "reduced chi-squared at the solution"),
             ("seconds", pa.float64(), "s", "wall time of this fit"),
             ("n_neighbours", pa.int64(), "", SEGMENT_COLUMNS["n_neighbours"]),
             ("blendedness", pa.float64(), "", SEGMENT_COLUMNS["blendedness"]),
             ("neighbours_modelled", pa.int64(), "", "neighbours whose fitted models were subtracted before the "
                                                     "fit, their covariance added to the errors")]
    cols += [(name, pa.float64(), "", text) for name, text in STELLARITY_COLUMNS.items()]
    return cols + flag_columns({**FLAGS, **STAR_FLAG})


def fit_chunk(cfg: SimConfig, adapt_size: bool, max_nfev: int, chunk, number: int, first_id: int,
              parts: str, columns: list[Column]) -> int:
    """Read, fit and write one chunk as a Parquet part."""
    stamps = chunk.read(cfg.stamp_size, adapt_size)
    ready = clean(stamps)
    n = len(ready.images)
    segments = mask_neighbours(ready)  # as galcae infer
    conditions = {k: np.broadcast_to(np.asarray(v, float), (n,)) for k, v in stamps.conditions.items()}
    if isinstance(cfg.noise.sky_level, tuple) and "sky_level" not in conditions:  # the sky of the stamp's noise
        noise = conditions.get("noise_sigma", ready.noise_sigma)
        conditions["sky_level"] = sky_level_for_sigma(noise, cfg.noise.gain, cfg.noise.read_noise)
    todo = ready.measurable & ~segments.centre_masked
    images, models, modelled, given = subtract_neighbours(cfg, ready, conditions, segments, todo, stamps.psf)
    fitted = fit_images(images, cfg, max_nfev, conditions if cfg.varies_conditions else None, todo,
                        psf_images=stamps.psf, mask=ready.mask)
    if models is not None:
        widen_for_neighbours(fitted, models, modelled, ready.mask, cfg, given, stamps.psf)
    found = ("x", "y", "flux", "half_light_radius", "half_light_radius_err")
    stars = stellarity(cfg, ready, conditions, {k: np.asarray(fitted[k])[todo] for k in found}, todo, stamps.psf)
    table = {"id": np.arange(first_id, first_id + n), **stamps.columns, **ready.flags, **segments.flags, **fitted,
             **stars,
             "n_neighbours": segments.n_neighbours, "blendedness": segments.blendedness,
             "neighbours_modelled": np.zeros(n, np.int64) if models is None else _put(models.count, modelled, n)}
    table["status"] = table["status"].astype(str)
    table["flag_fit_failed"] = table["status"] != OK
    return write_part(parts, number, table, columns)


def subtract_neighbours(cfg: SimConfig, ready, conditions: dict, segments, todo: np.ndarray, psf):
    """The stamps less their neighbours' fitted models (:mod:`galcae.estimate.neighbours`, as
    the refinement of ``galcae infer`` subtracts them), those models, the rows they are of and
    those rows' conditions as the batch fit takes them (``(images, None, None, None)`` where
    there is nothing to model, or the stamps' PSFs are not known)."""
    given, rows = _batch_conditions(cfg, conditions, ready.noise_sigma, todo, psf is not None)
    if not len(rows) or not np.isin(segments.neighbours.sources["stamp"], rows).any():
        return ready.images, None, None, None
    models = neighbour_light(ready.images[rows], cfg, given, segments.neighbours.take(rows), psf_rows(psf, rows))
    images = ready.images.copy()
    images[rows] -= models.light
    return images, models, rows, given


def widen_for_neighbours(fitted: dict, models, rows: np.ndarray, mask: np.ndarray, cfg: SimConfig,
                         given: dict, psf) -> None:
    """The fitted ``rows``' errors widened by their neighbours' models' covariance (``given``:
    the rows' conditions, as :func:`subtract_neighbours` returns them)."""
    values = {k: np.asarray(fitted[k], float)[rows] for k in FIT_PARAMETERS}
    ok = np.all([np.isfinite(v) for v in values.values()], axis=0) & (models.count > 0)
    if not ok.any():
        return
    start = {k: np.where(ok, v, values[k][ok][0]) for k, v in values.items()}  # drawn, but not used, where not ok
    extra = np.diagonal(propagated_covariance(models, start, mask[rows], cfg, given, psf_rows(psf, rows)),
                        axis1=1, axis2=2)
    for i, name in enumerate(FIT_PARAMETERS):
        err = np.asarray(fitted[f"{name}_err"], float).copy()
        err[rows[ok]] = np.sqrt(err[rows[ok]] ** 2 + np.fmax(extra[ok, i], 0.0))
        fitted[f"{name}_err"] = err


def _batch_conditions(cfg, conditions, noise_sigma, todo, image_psf: bool) -> tuple[dict, np.ndarray]:
    """The batch fit's conditions of the ``todo`` stamps whose conditions are known and finite,
    and those rows."""
    from ..config import ConfigError
    from ..estimate.refine import stamp_conditions

    known = {"noise_sigma": noise_sigma, **conditions} if "sky_level" not in conditions else conditions
    rows = np.flatnonzero(todo)
    try:
        given = stamp_conditions(cfg, known, rows, image_psf)
    except ConfigError:  # the PSF varies and is not given: fit_images flags those rows
        return {}, rows[:0]
    finite = np.all([np.isfinite(v) & (v > 0) for v in given.values()], axis=0)
    return {k: v[finite] for k, v in given.items()}, rows[finite]


def _put(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, values.dtype)
    out[rows] = values
    return out


def fit_catalog(inputs, out, cfg: SimConfig, *, workers: int = 1, scheduler: str | None = None,
                chunk_size: int = 64, adapt_size: bool = False, max_nfev: int = 100, hdu=None,
                detect_threshold: float = 3.0, overwrite: bool = False, conditions=None, psf=None,
                echo=None) -> dict:
    """Fit every stamp of ``inputs`` (as ``galcae infer`` reads them); write the catalog ``out``.

    ``cfg`` describes the images: stamp size, pixel scale, PSF and noise model (the
    per-pixel variance of the likelihood). Where it draws the PSF or the sky per galaxy,
    each stamp's come from ``conditions`` (a table, as ``galcae infer --conditions``) or the
    input's keywords, and its sky from its ``sky_level``, else from the noise it states or
    that is measured on it (as the refinement of ``galcae infer`` does). ``psf``: PSF images
    (:mod:`galcae.catalog.psf`), which the fit then convolves with instead of ``cfg``'s profile.
    """
    from dataclasses import asdict

    out = catalog_path(out)
    meta = {"method": "galsim+scipy.least_squares", "psf": asdict(cfg.psf), "noise": asdict(cfg.noise),
            "max_nfev": max_nfev, "flags": FLAGS}
    return build_catalog(
        partial(fit_chunk, cfg, adapt_size, max_nfev), inputs, out, columns_for=catalog_columns,
        meta=meta, options={"config": to_dict(cfg), "adapt_size": adapt_size, "max_nfev": max_nfev},
        stamp_size=cfg.stamp_size, pixel_scale=cfg.pixel_scale, workers=workers, scheduler=scheduler,
        chunk_size=chunk_size, hdu=hdu, detect_threshold=detect_threshold, desc="fit",
        fits_keys={"method": "METHOD", "max_nfev": "MAXNFEV"}, overwrite=overwrite, conditions=conditions, psf=psf,
        **({"echo": echo} if echo else {}))

