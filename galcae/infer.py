"""``galcae infer``: parameters with uncertainties for many stamps, streamed in chunks.

Chunks are planned, run (in-process or on Dask workers, each loading the model once),
written as Parquet parts and resumed by :mod:`galcae.catalog`; this module holds what is
particular to the CAE: the forward pass, its uncertainties and its flags.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from .catalog import (STAMP_FLAGS, CleanStamps, Column, atomic_save, build_catalog, catalog_path, clean,
                      flag_columns, id_columns, write_part)
from .checkpoint import TrainedModel, load_model, model_paths
from .conditions import condition_table
from .outputs import atomic_file
from .params import CONDITIONS, ellipticity_errors, ellipticity_from_shear, unit_of
from .sources import InputError
from .uncertainty import LEVELS, HeldoutScatter, VarianceCalibration, half_widths, physical_sigma

log = logging.getLogger(__name__)

#: Per-row flags of an inference catalog; ``True`` means the condition holds.
FLAGS = {**STAMP_FLAGS,
         "flag_out_of_range": "a prediction outside the training range, or pixels brighter than "
                              "any the model was trained on",
         "flag_conditions_out_of_range": "seeing or noise outside what the model was trained on "
                                         "(or unknown)"}
#: Added when refining (``--refine-snr``).
REFINE_FLAGS = {"flag_refine_failed": "the classical fit of a bright stamp failed; the CAE's values "
                                      "are kept"}


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
    refine_snr: float | None = None  # classical fit, from the CAE's values, of stamps this bright


def uncertainty_method(model: TrainedModel, samples: int) -> str:
    head = model.network.arch.predict_variance
    if samples > 1:
        return "nll+mc_dropout" if head else "mc_dropout"
    return "nll" if head else "heldout"


def catalog_columns(model_meta: dict, has_field: bool, refine: bool = False) -> list[Column]:
    """``(name, arrow type, unit, description)`` of every catalog column, in order."""
    cols = id_columns(has_field)
    names = model_meta["parameter_scaling"]["names"]
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
    for name in model_meta.get("condition_scaling", {}).get("names", []):
        cols.append((name, pa.float64(), unit_of(name), f"observing condition used: {CONDITIONS[name].description}"))
    if refine:
        cols += [("snr", pa.float64(), "", "matched-filter S/N measured on the stamp "
                                           "(sqrt(sum(d^2/var) - N_pixels))"),
                 ("refined", pa.bool_(), "", "values and errors are the classical fit's, started "
                                             "at the CAE's (snr >= the refine threshold)")]
    return cols + flag_columns({**FLAGS, **(REFINE_FLAGS if refine else {})})


# --- the per-chunk work ------------------------------------------------------------------

_MODELS: dict[tuple[str, str, str], TrainedModel] = {}


def worker_model(meta_path: str, sha: str, device: str) -> TrainedModel:
    """The model, loaded once per process (each Dask worker keeps its own)."""
    key = (meta_path, sha, device)
    if key not in _MODELS:
        model = load_model(meta_path, device=device)
        if model.meta["weights_sha256"] != sha:
            raise InputError(f"{meta_path} changed while the catalog was being made")
        _MODELS[key] = model
    return _MODELS[key]


def measure(model: TrainedModel, images: np.ndarray, conditions: dict | None = None, *,
            samples: int = 1, batch_size: int | None = None, generator: torch.Generator | None = None,
            latents: bool = False) -> dict[str, np.ndarray]:
    """Predicted parameters, ``<name>_err`` and the central 95% interval ``<name>_lo95``,
    ``<name>_hi95`` of finite ADU stamps ``(N, H, W)``.

    ``conditions``: the observing conditions of a conditioned model (see
    :meth:`TrainedModel.condition_input`). Errors: the variance head (recalibrated) when the
    model has one, else the held-out scatter; ``samples > 1`` adds MC dropout, the spread of
    ``samples`` draws of the dropout mask on the encoder features (the convolutions run
    once). ``latents=True`` adds the full latent vectors (for reconstructions).
    """
    net = model.network.eval()
    n_sup = len(model.supervised)
    p = net.arch.dropout
    check_samples(model, samples)
    c = model.condition_input(images, conditions)
    z_mean, z_var, z_all = [], [], []
    with torch.inference_mode():
        for x, cb in model.batches(images, c, batch_size or model.batch_size):
            h = net.encoder(x)
            z, log_var = net.heads(h, cb)
            if latents:
                z_all.append(z.float().cpu().numpy())
            if samples == 1:
                z_mean.append(z[:, :n_sup].float().cpu().numpy())
                if log_var is not None:
                    z_var.append(log_var.exp().float().cpu().numpy())
                continue
            draws = [net.heads(h * (torch.rand(h.shape, generator=generator).to(h.device) >= p)
                               / (1 - p), cb) for _ in range(samples)]
            means = torch.stack([d[0][:, :n_sup] for d in draws])
            var = means.var(0)
            if log_var is not None:  # noise (the head, averaged) plus model (the spread of means)
                var = var + torch.stack([d[1].exp() for d in draws]).mean(0)
            z_mean.append(means.mean(0).float().cpu().numpy())
            z_var.append(var.float().cpu().numpy())
    empty = np.empty((0, n_sup), np.float32)
    z = np.concatenate(z_mean) if z_mean else empty
    tail = 1.0  # Gaussian 95% intervals unless the recalibration has a tail stage
    if z_var:
        sigma_z = np.sqrt(np.concatenate(z_var))
        if net.arch.predict_variance:
            calibration = VarianceCalibration.from_meta(model.meta, n_sup)
            if calibration.needs_snr:  # the noise already measured for the conditions, if it was
                noise = (conditions or {}).get("noise_sigma")
                noise = None if noise is None else np.broadcast_to(np.asarray(noise, float), (len(images),))
                sigma_z = calibration.apply(sigma_z, model.stamp_snr(images, noise))
            else:
                sigma_z = calibration.apply(sigma_z)
            tail = calibration.tail(sigma_z)
    elif samples == 1 and not net.arch.predict_variance:
        sigma_z = HeldoutScatter.from_dict(model.meta["heldout_scatter"]).latent_sigma(z)
    else:
        sigma_z = empty
    values = model.scaling.to_physical(z)
    errors = physical_sigma(model.scaling, z, sigma_z)
    wide = half_widths(sigma_z, tail)[LEVELS[1]]  # latent: log10 axes give asymmetric ends
    lo, hi = model.scaling.to_physical(z - wide), model.scaling.to_physical(z + wide)
    out = {}
    for name in model.supervised:
        out[name], out[f"{name}_err"] = values[name], errors[name]
        out[f"{name}_lo95"], out[f"{name}_hi95"] = lo[name], hi[name]
    if "g1" in out and "g2" in out:
        out["ellipticity"], out["position_angle"] = ellipticity_from_shear(out["g1"], out["g2"])
        out["ellipticity_err"], out["position_angle_err"] = ellipticity_errors(
            out["g1"], out["g2"], out["g1_err"], out["g2_err"])
    if latents:
        out["latents"] = np.concatenate(z_all) if z_all else np.empty((0, net.arch.latent_dim))
    return out


def check_samples(model: TrainedModel, samples: int, where="the model") -> None:
    """Refuse an uncertainty method the model cannot give."""
    if samples > 1 and model.network.arch.dropout <= 0:
        raise InputError(f"--samples {samples} needs a model trained with dropout > 0 "
                         f"(galcae train ... dropout=0.1); {where} has none")
    if samples == 1 and not model.network.arch.predict_variance and "heldout_scatter" not in model.meta:
        raise InputError(f"{where} has no held-out error model (trained by an older galcae); "
                         "retrain it, or use --samples K with a dropout model")


def chunk_conditions(model: TrainedModel, stamps, ready: CleanStamps, options: InferOptions) -> dict:
    """The observing conditions of a chunk's stamps: the options, else what the input states
    (FITS keywords, a dataset's truth); ``noise_sigma`` as measured on the raw stamps.

    A condition that is unknown or physically impossible (``PSFFWHM = -1``, outside the
    bounds of :data:`galcae.params.CONDITIONS`) is NaN: the stamp is flagged, not the run stopped.
    """
    given = {name: np.nan for name in model.conditions if name != "noise_sigma"}
    given.update(stamps.conditions)
    for name in ("psf_fwhm", "psf_beta"):
        if getattr(options, name) is not None:
            given[name] = getattr(options, name)
    given["noise_sigma"] = ready.noise_sigma
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
        lo, hi = model.meta.get("training_range", {}).get(name, (-np.inf, np.inf))
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
    # Stamps without known conditions cannot be measured by a conditioned model: left NaN.
    skip = ~ready.measurable | (~np.all([np.isfinite(v) for v in conditions.values()], axis=0)
                                if conditions else False)
    n = len(skip)
    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + number)
    result = measure(model, ready.images[~skip], {k: v[~skip] for k, v in conditions.items()},
                     samples=options.samples, batch_size=options.batch_size, generator=generator,
                     latents=options.reconstruct)
    if options.refine_snr is not None:
        from .refine import fit_error_calibration, refine, training_config

        done = refine(training_config(model.meta), ready.images[~skip],
                      {k: v[~skip] for k, v in conditions.items()}, result, options.refine_snr,
                      calibration=fit_error_calibration(model.meta))
        result.update(done)
        result["flag_refine_failed"] = result.pop("refine_failed")

    table = {"id": np.arange(first_id, first_id + n), **stamps.columns, **ready.flags, **conditions}
    out_of_range = ready.brightest > model.normalization.ceiling
    training_range = model.meta.get("training_range", {})
    for key in result:
        if key == "latents":
            continue
        table[key] = np.full(n, np.nan) if result[key].dtype != bool else np.zeros(n, bool)
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


def infer_catalog(model_path, inputs, out, *, workers: int = 1, scheduler: str | None = None,
                  chunk_size: int = 4096, options: InferOptions = InferOptions(), hdu=None,
                  reconstruct_to=None, detect_threshold: float = 3.0, overwrite: bool = False,
                  echo=log.info) -> dict:
    """Measure every stamp of ``inputs`` with a trained model; write the catalog ``out``.

    Parameters
    ----------
    model_path : path
        Run directory, ``model.safetensors`` or ``model.json``.
    inputs : list of paths or globs
        FITS cubes, FITS stamps (or directories of them), galcae datasets, FITS fields.
    out : path
        ``.parquet`` or ``.fits`` catalog; refused if it exists, unless ``overwrite``.
    workers, scheduler
        In-process (1), a local Dask cluster of ``workers`` processes, or a running scheduler.
    chunk_size : int
        Stamps per chunk: the unit of work, of memory per worker and of resumption.
    reconstruct_to : path, optional
        Also decode every stamp and write the reconstructions (``.fits`` cube or ``.zarr``).

    Returns a summary: rows, chunks done now and skipped, flag counts, the output paths.
    """
    if reconstruct_to is not None:
        options = InferOptions(**{**asdict(options), "reconstruct": True})
        if not str(reconstruct_to).lower().endswith((".fits", ".zarr")):
            raise InputError(f"{reconstruct_to}: reconstructions must go to a .fits or .zarr path")
    out = catalog_path(out)
    if options.samples < 1:
        raise InputError(f"--samples {options.samples} must be at least 1")
    refining = options.refine_snr is not None
    if refining and not options.refine_snr >= 0:
        raise InputError(f"--refine-snr {options.refine_snr} must be a S/N of 0 or more")
    model = load_model(model_path, device="cpu")
    _, meta_path = model_paths(model_path)
    sha = model.meta["weights_sha256"]
    check_samples(model, options.samples, meta_path)

    missing = [n for n in model.conditions if n != "noise_sigma" and getattr(options, n) is None]
    if missing:
        log.info("%s: %s taken from the inputs (PSFFWHM / PSFBETA keywords or a dataset's truth); "
                 "stamps without them are left unmeasured", meta_path.parent, ", ".join(missing))
    meta = {"model": str(meta_path), "model_sha256": sha, "model_epochs": model.epochs_trained,
            "uncertainty": uncertainty_method(model, options.samples),
            "samples": options.samples, "flags": {**FLAGS, **(REFINE_FLAGS if refining else {})},
            "refine_snr": options.refine_snr}
    if refining:
        meta["uncertainty"] += f"; classical fit where snr >= {options.refine_snr:g}"

    def reconstructions_of(parts, number):  # a chunk is done when these exist too
        return [recon_path(parts, number)] if options.reconstruct else []

    def write_all_reconstructions(parts, plan):
        write_reconstructions(Path(reconstruct_to), parts, len(plan.chunks), model)

    summary = build_catalog(
        partial(infer_chunk, str(meta_path.resolve()), sha, options), inputs, out,
        columns_for=partial(catalog_columns, model.meta, refine=refining), meta=meta,
        options={"model": sha, **asdict(options)}, stamp_size=model.network.arch.stamp_size,
        pixel_scale=model.meta["dataset"]["simulate"]["pixel_scale"], workers=workers,
        scheduler=scheduler, chunk_size=chunk_size, hdu=hdu, detect_threshold=detect_threshold,
        desc="infer", echo=echo,
        fits_keys={"model_sha256": "MODELSHA", "uncertainty": "UNCERT", "samples": "SAMPLES"},
        overwrite=overwrite, also_writes={"--reconstruct": reconstruct_to}, extra_files=reconstructions_of,
        after=write_all_reconstructions if options.reconstruct else None)
    unmeasured = summary["flags"].get("flag_conditions_out_of_range", 0)
    if missing and unmeasured == summary["rows"] and summary["rows"]:
        echo(f"Every stamp is flagged flag_conditions_out_of_range; stamps that state no PSF "
             f"are not measured: pass {' '.join('--' + n.replace('_', '-') + ' VALUE' for n in missing)} "
             "(or set the PSFFWHM / PSFBETA keywords)")
    return {**summary, "uncertainty": meta["uncertainty"],
            "reconstructions": str(reconstruct_to) if reconstruct_to else None}


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
    array.attrs.update({"unit": "adu", "model_sha256": model.meta["weights_sha256"]})
    start = 0
    for f in files:
        block = np.load(f)
        array[start:start + len(block)] = block
        start += len(block)


def _fits_reconstructions(tmp: Path, files, n: int, size: int, model: TrainedModel) -> None:
    from astropy.io import fits

    header = fits.Header()
    header.update({"SIMPLE": True, "BITPIX": -32, "NAXIS": 3, "NAXIS1": size, "NAXIS2": size,
                   "NAXIS3": n, "BUNIT": "adu", "MODELSHA": model.meta["weights_sha256"][:16]})
    stream = fits.StreamingHDU(tmp, header)
    for f in files:
        stream.write(np.load(f).astype(">f4"))
    stream.close()
