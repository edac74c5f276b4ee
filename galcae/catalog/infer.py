"""``galcae infer``: parameters with uncertainties for many stamps, streamed in chunks.

Chunks are planned, run (in-process or on Dask workers, each loading the model once),
written as Parquet parts and resumed by :mod:`galcae.catalog`; this module holds what is
particular to the CAE: the forward pass, its uncertainties and its flags.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ..card import MODEL_DEFAULT, model_paths
from ..checkpoint import TrainedModel, load_model
from ..conditions import condition_table
from ..estimate.cae import check_samples, measure, uncertainty_method
from ..estimate.stellarity import STAR_FLAG, STELLARITY_COLUMNS
from ..outputs import atomic_file
from ..params import CONDITIONS, unit_of
from ..physics import psf_rows
from .chunks import build_catalog
from .segment import SEGMENT_COLUMNS, SEGMENT_FLAGS, fill_with_sky, mask_neighbours
from .sources import InputError
from .stamps import STAMP_FLAGS, CleanStamps, clean
from .stars import stellarity
from .writers import Column, atomic_save, catalog_path, flag_columns, id_columns, write_part

log = logging.getLogger(__name__)

#: Per-row flags of an inference catalog; ``True`` means the condition holds.
FLAGS = {**STAMP_FLAGS, **SEGMENT_FLAGS,
         "flag_out_of_range": "a prediction outside the training range, or pixels brighter than "
                              "any the model was trained on",
         "flag_conditions_out_of_range": "seeing or noise outside what the model was trained on "
                                         "(or unknown)"}
#: Added when refining (``--refine-snr``).
REFINE_FLAGS = {"flag_refine_failed": "the classical fit of a bright stamp failed; the CAE's values "
                                      "are kept",
                "flag_poor_fit": "the refining fit's chi2_dof over the galaxy is 5 of its standard deviations "
                                 "above 1: the galaxy or PSF is not the model (its errors are widened by "
                                 "sqrt(chi2_dof))"}


@dataclass(frozen=True)
class InferOptions:
    """What changes the numbers in a catalog (and so the identity of its parts)."""

    samples: int = 1  # MC-dropout passes; 1 = plain encoder
    adapt_size: bool = False  # centre-crop / zero-pad stamps of another size
    batch_size: int | None = None  # None: the model's device default (32 on CPU)
    seed: int = 0  # MC-dropout draws, per chunk
    reconstruct: bool = False
    device: str = "auto"
    psf_fwhm: float | None = None  # arcsec; overrides the inputs' own (PSFFWHM, dataset truth)
    psf_beta: float | None = None  # Moffat beta; likewise (PSFBETA)
    # Classical fit, from the CAE's values, of stamps this bright; None: none; "model": the
    # model card's policy (resolved by infer_catalog before anything is planned).
    refine_snr: float | str | None = MODEL_DEFAULT
    # Refined rows' errors get the model card's model-error floor (galcae.estimate.refine).
    model_error: bool = True


def catalog_columns(model: TrainedModel, has_field: bool, refine: bool = False) -> list[Column]:
    """``(name, arrow type, unit, description)`` of every catalog column, in order."""
    cols = id_columns(has_field)
    names = model.supervised
    for name in names:
        unit = unit_of(name)
        cols += [(name, pa.float64(), unit, f"predicted {name.replace('_', ' ')}"),
                 (f"{name}_err", pa.float64(), unit, f"1-sigma uncertainty of {name}"),
                 (f"{name}_lo95", pa.float64(), unit, f"lower end of the central 95% interval of {name}"),
                 (f"{name}_hi95", pa.float64(), unit, f"upper end of the central 95% interval of {name}")]
    if {"g1", "g2"} <= set(names):
        cols += [("ellipticity", pa.float64(), "", "|g| from the predicted g1, g2"),
                 ("ellipticity_err", pa.float64(), "", "1-sigma uncertainty of ellipticity"),
                 ("position_angle", pa.float64(), "deg", "major axis from +x, counter-clockwise"),
                 ("position_angle_err", pa.float64(), "deg", "1-sigma uncertainty of position_angle")]
    for name in model.conditions:
        cols.append((name, pa.float64(), unit_of(name), f"observing condition used: {CONDITIONS[name].description}"))
    cols += [("n_neighbours", pa.int64(), "", SEGMENT_COLUMNS["n_neighbours"]),
             ("blendedness", pa.float64(), "", SEGMENT_COLUMNS["blendedness"])]
    if refine:
        cols += [("snr", pa.float64(), "", "matched-filter S/N measured on the stamp "
                                           "(sqrt(sum(d^2/var) - N_pixels))"),
                 ("refined", pa.bool_(), "", "values and errors are the classical fit's, started "
                                             "at the CAE's (snr >= the refine threshold)"),
                 ("chi2_dof", pa.float64(), "", "reduced chi-squared of the refining fit over the "
                                                "galaxy's pixels, in units of the stamp's other "
                                                "pixels' (NaN where not refined): well above 1, the "
                                                "galaxy or PSF is not the model, and the errors are "
                                                "widened by its square root"),
                 ("neighbours_modelled", pa.int64(), "", "neighbours whose fitted models were subtracted "
                                                         "before the refining fit (0 where not refined)")]
    cols += [(name, pa.float64(), "", text) for name, text in STELLARITY_COLUMNS.items()]
    return cols + flag_columns({**FLAGS, **STAR_FLAG, **(REFINE_FLAGS if refine else {})})


# --- the per-chunk work ------------------------------------------------------------------

_MODELS: dict[tuple[str, str, str], TrainedModel] = {}


def worker_model(meta_path: str, sha: str, device: str) -> TrainedModel:
    """The model, loaded once per process (each Dask worker keeps its own)."""
    key = (meta_path, sha, device)
    if key not in _MODELS:
        model = load_model(meta_path, device=device)
        if model.card.weights_sha256 != sha:
            raise InputError(f"{meta_path} changed while the catalog was being made")
        _MODELS[key] = model
    return _MODELS[key]


def chunk_conditions(model: TrainedModel, stamps, ready: CleanStamps, options: InferOptions) -> dict:
    """The observing conditions of a chunk's stamps: the options, else what the inputs state
    (a ``--conditions`` table, FITS keywords, a dataset's truth); ``noise_sigma`` as the table
    gives it, else as measured on the raw stamps.

    A condition that is unknown or physically impossible (``PSFFWHM = -1``, outside the
    bounds of :data:`galcae.params.CONDITIONS`) is NaN: the stamp is flagged, not the run stopped.
    """
    given = {name: np.nan for name in model.conditions if name != "noise_sigma"}
    given.update(stamps.conditions)
    for name in ("psf_fwhm", "psf_beta"):
        if getattr(options, name) is not None:
            given[name] = getattr(options, name)
    given.setdefault("noise_sigma", ready.noise_sigma)
    table = condition_table(model.conditions, ready.images, given)
    for name, values in table.items():
        lo, hi = CONDITIONS[name].bounds
        with np.errstate(invalid="ignore"):
            values[~((values >= lo) & (values <= hi))] = np.nan
    return table


def conditions_out_of_range(model: TrainedModel, conditions: dict, n: int) -> np.ndarray:
    """Rows whose conditions are unknown or outside the training range (5% slack on the ends)."""
    flag = np.zeros(n, bool)
    for name, values in conditions.items():
        lo, hi = model.card.training_range.get(name, (-np.inf, np.inf))
        slack = 0.05 * (hi - lo)
        with np.errstate(invalid="ignore"):
            flag |= ~((values >= lo - slack) & (values <= hi + slack))
    return flag


def infer_chunk(meta_path: str, sha: str, options: InferOptions, chunk, number: int, first_id: int,
                parts: str, columns: list[Column]) -> int:
    """Read, measure and write one chunk as a Parquet part (and its reconstructions)."""
    model = worker_model(meta_path, sha, options.device)
    stamps = chunk.read(model.network.arch.stamp_size, options.adapt_size)
    ready = clean(stamps)
    conditions = chunk_conditions(model, stamps, ready, options)
    unknown = conditions_out_of_range(model, conditions, len(stamps.images))
    # The other sources in each stamp: masked (no weight in the fit), and sky noise to the
    # network, which has seen noise everywhere in training (a hole of zeros, never).
    segments = mask_neighbours(ready)
    masked, read = fill_with_sky(ready.images, segments.mask, ready.noise_sigma,
                                 np.random.default_rng([options.seed, number]))
    # Stamps without known conditions cannot be measured by a conditioned model, nor those
    # whose centre is masked: left NaN.
    skip = ~ready.measurable | segments.centre_masked | (
        ~np.all([np.isfinite(v) for v in conditions.values()], axis=0) if conditions else False)
    n = len(skip)
    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + number)
    result = measure(model, ready.images[~skip], {k: v[~skip] for k, v in conditions.items()},
                     samples=options.samples, batch_size=options.batch_size, generator=generator,
                     latents=options.reconstruct, mask=ready.mask[~skip])
    # The refinement models the neighbours from their own pixels: it gets the stamps as read.
    ready.images[masked] = read
    if options.refine_snr is not None:
        from ..estimate.refine import refine

        result = refine(model.card.training_set, ready.images[~skip],
                        {k: v[~skip] for k, v in conditions.items()}, result, options.refine_snr,
                        calibration=model.card.refinement.calibration,
                        psf=psf_rows(stamps.psf, ~skip), mask=ready.mask[~skip],
                        neighbours=segments.neighbours.take(np.flatnonzero(~skip)),
                        model_error=model.card.refinement.model_error if options.model_error else None)
        result["flag_refine_failed"] = result.pop("refine_failed")
        result["flag_poor_fit"] = result.pop("poor_fit")
        hidden = result.pop("hidden_neighbours")

    stars = stellarity(model.card.training_set, ready, conditions, result, ~skip, stamps.psf)
    table = {"id": np.arange(first_id, first_id + n), **stamps.columns, **ready.flags, **segments.flags,
             **conditions, "n_neighbours": segments.n_neighbours, "blendedness": segments.blendedness, **stars}
    if options.refine_snr is not None:  # neighbours the refinement found merged with the galaxy
        table["n_neighbours"] = table["n_neighbours"].copy()
        table["n_neighbours"][~skip] += hidden
        table["flag_blended"] = table["flag_blended"] | np.isin(np.arange(n), np.flatnonzero(~skip)[hidden > 0])
    out_of_range = ready.brightest > model.normalization.ceiling
    training_range = model.card.training_range
    for key in result:
        if key == "latents":
            continue
        table[key] = np.zeros(n, result[key].dtype) if result[key].dtype.kind in "bi" else np.full(n, np.nan)
        table[key][~skip] = result[key]
        if key in training_range and key in model.supervised:
            lo, hi = training_range[key]
            with np.errstate(invalid="ignore"):
                out_of_range |= (table[key] < lo) | (table[key] > hi)
    table["flag_out_of_range"] = out_of_range
    table["flag_conditions_out_of_range"] = unknown

    if options.reconstruct:
        recon = np.full(ready.images.shape, np.nan, np.float32)
        recon[~skip] = model.decode(result["latents"], {k: v[~skip] for k, v in conditions.items()},
                                    options.batch_size)
        atomic_save(recon_path(parts, number), lambda p: np.save(p, recon))
    return write_part(parts, number, table, columns)


def recon_path(parts, number: int) -> Path:
    return Path(parts) / f"recon-{number:06d}.npy"


#: Stamps per chunk by default: large for the CAE alone; smaller when refining, so that
#: workers share the fits.
CHUNK_SIZE, REFINE_CHUNK_SIZE = 4096, 1024


def infer_catalog(model_path, inputs, out, *, workers: int = 1, scheduler: str | None = None,
                  chunk_size: int | None = None, options: InferOptions = InferOptions(), hdu=None,
                  reconstruct_to=None, detect_threshold: float = 3.0, overwrite: bool = False,
                  conditions=None, psf=None, echo=log.info) -> dict:
    """Measure every stamp of ``inputs`` with a trained model; write the catalog ``out``.

    Parameters
    ----------
    model_path : path or str
        A shipped model's name (``"survey"``), a run directory, ``model.safetensors`` or ``model.json``.
    inputs : list of paths or globs
        FITS cubes, FITS stamps (or directories of them), galcae datasets, FITS fields.
    out : path
        ``.parquet`` or ``.fits`` catalog; refused if it exists, unless ``overwrite``.
    workers, scheduler
        In-process (1), a local Dask cluster of ``workers`` processes, or a running scheduler.
    chunk_size : int, optional
        Stamps per chunk: the unit of work, of memory per worker and of resumption
        [default: 4096; 1024 when refining].
    options : InferOptions
        What changes the numbers; ``refine_snr`` defaults to the model card's policy.
    reconstruct_to : path, optional
        Also decode every stamp and write the reconstructions (``.fits`` cube or ``.zarr``).
    conditions : path, optional
        A table of every stamp's observing conditions (:mod:`galcae.catalog.conditions_table`).
    psf : path, optional
        PSF images, one for all stamps or one per stamp (:mod:`galcae.catalog.psf`); a
        seeing-conditioned model takes the Moffat FWHM and beta fitted to each.

    Returns a summary: rows, chunks done now and skipped, flag counts, the output paths.
    """
    out = catalog_path(out)
    _, meta_path = model_paths(model_path)
    model = load_model(model_path, device=options.device)
    options = resolved_options(model, options, reconstruct_to, meta_path)
    sha = model.card.weights_sha256
    _MODELS[(str(meta_path.resolve()), sha, options.device)] = model  # in-process chunks reuse it
    missing = [n for n in model.conditions if n != "noise_sigma" and getattr(options, n) is None]
    if missing:
        log.info("%s: %s taken from the inputs (PSFFWHM / PSFBETA keywords or a dataset's truth); "
                 "stamps without them are left unmeasured", meta_path.parent, ", ".join(missing))
    meta = catalog_meta(model, meta_path, options)
    refining = options.refine_snr is not None
    summary = build_catalog(
        partial(infer_chunk, str(meta_path.resolve()), sha, options), inputs, out,
        columns_for=partial(catalog_columns, model, refine=refining), meta=meta,
        options={"model": sha, **asdict(options)}, stamp_size=model.card.stamp_size,
        pixel_scale=model.card.pixel_scale, workers=workers, scheduler=scheduler,
        chunk_size=chunk_size or (REFINE_CHUNK_SIZE if refining else CHUNK_SIZE), hdu=hdu,
        detect_threshold=detect_threshold, desc="infer", echo=echo,
        fits_keys={"model_sha256": "MODELSHA", "uncertainty": "UNCERT", "samples": "SAMPLES"},
        overwrite=overwrite, also_writes={"--reconstruct": reconstruct_to}, conditions=conditions, psf=psf,
        extra_files=lambda parts, number: [recon_path(parts, number)] if options.reconstruct else [],
        after=(partial(_write_all_reconstructions, Path(reconstruct_to) if reconstruct_to else None, model)
               if options.reconstruct else None))
    unmeasured = summary["flags"].get("flag_conditions_out_of_range", 0)
    if missing and unmeasured == summary["rows"] and summary["rows"]:
        echo(f"Every stamp is flagged flag_conditions_out_of_range; stamps that state no PSF "
             f"are not measured: pass {' '.join('--' + n.replace('_', '-') + ' VALUE' for n in missing)} "
             "(or set the PSFFWHM / PSFBETA keywords)")
    return {**summary, "uncertainty": meta["uncertainty"],
            "reconstructions": str(reconstruct_to) if reconstruct_to else None}


def resolved_options(model: TrainedModel, options: InferOptions, reconstruct_to, where) -> InferOptions:
    """``options`` checked, with the model card's refinement policy and ``reconstruct`` filled in."""
    if reconstruct_to is not None and not str(reconstruct_to).lower().endswith((".fits", ".zarr")):
        raise InputError(f"{reconstruct_to}: reconstructions must go to a .fits or .zarr path")
    if options.samples < 1:
        raise InputError(f"--samples {options.samples} must be at least 1")
    refine_snr = model.card.refine_snr_for(options.refine_snr)
    if refine_snr is not None and not (isinstance(refine_snr, (int, float)) and refine_snr >= 0):
        raise InputError(f"--refine-snr {refine_snr} must be a S/N of 0 or more")
    check_samples(model, options.samples, where)
    return replace(options, refine_snr=refine_snr, reconstruct=options.reconstruct or reconstruct_to is not None)


def catalog_meta(model: TrainedModel, meta_path: Path, options: InferOptions) -> dict:
    """What a catalog says about how it was made (Parquet metadata, FITS header)."""
    refining = options.refine_snr is not None
    meta = {"model": str(meta_path), "model_sha256": model.card.weights_sha256,
            "model_epochs": model.epochs_trained, "uncertainty": uncertainty_method(model, options.samples),
            "samples": options.samples, "flags": {**FLAGS, **(REFINE_FLAGS if refining else {})},
            "refine_snr": options.refine_snr}
    if refining:
        meta["uncertainty"] += f"; classical fit where snr >= {options.refine_snr:g}"
        floors = model.card.refinement.model_error if options.model_error else {}
        meta["refine_model_error"] = floors
        if floors:
            meta["uncertainty"] += " (errors with the model card's model-error floor)"
    return meta


def _write_all_reconstructions(path: Path, model: TrainedModel, parts, plan) -> None:
    write_reconstructions(path, parts, len(plan.chunks), model)


def write_reconstructions(path: Path, parts: Path, n_chunks: int, model: TrainedModel) -> None:
    """Concatenate the per-chunk reconstructions into a Zarr array or a FITS cube (streamed)."""
    files = [recon_path(parts, i) for i in range(n_chunks)]
    n = sum(np.load(f, mmap_mode="r").shape[0] for f in files)
    size = model.network.arch.stamp_size
    with atomic_file(path) as tmp:
        if path.suffix.lower() == ".zarr":
            _zarr_reconstructions(tmp, files, n, size, model)
        else:
            _fits_reconstructions(tmp, files, n, size, model)


def _zarr_reconstructions(tmp: Path, files, n: int, size: int, model: TrainedModel) -> None:
    import zarr

    array = zarr.create_array(store=str(tmp), shape=(n, size, size), dtype="float32",
                              chunks=(min(n, 1024), size, size))
    array.attrs.update({"unit": "adu", "model_sha256": model.card.weights_sha256})
    start = 0
    for f in files:
        block = np.load(f)
        array[start:start + len(block)] = block
        start += len(block)


def _fits_reconstructions(tmp: Path, files, n: int, size: int, model: TrainedModel) -> None:
    from astropy.io import fits

    header = fits.Header()
    header.update({"SIMPLE": True, "BITPIX": -32, "NAXIS": 3, "NAXIS1": size, "NAXIS2": size,
                   "NAXIS3": n, "BUNIT": "adu", "MODELSHA": model.card.weights_sha256[:16]})
    stream = fits.StreamingHDU(tmp, header)
    for f in files:
        stream.write(np.load(f).astype(">f4"))
    stream.close()
