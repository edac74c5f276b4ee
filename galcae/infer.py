"""``galcae infer``: parameters with uncertainties for many stamps, streamed in chunks.

The inputs are planned into chunks (:mod:`galcae.sources`); each chunk is read, encoded
and written as its own Parquet part by whoever runs it (this process or a Dask worker,
which loads the model once). Parts live in ``CATALOG.parts/`` until every chunk is done;
re-running the same command skips the parts already there, and only then are the parts
streamed into the catalog (Parquet or FITS), so an interruption loses at most the
chunks in flight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import __version__
from .checkpoint import TrainedModel, load_model, model_paths, sha256_of
from .distributed import dask_client, map_chunks
from .params import unit_of
from .sources import InputError, Plan, plan_inputs
from .uncertainty import HeldoutScatter, physical_sigma

log = logging.getLogger(__name__)

FORMAT = "galcae-catalog/1"
OUTPUT_SUFFIXES = (".parquet", ".fits", ".fit")

#: Per-row flags; ``True`` means the condition holds. Rows are never dropped.
FLAGS = {
    "flag_nan_pixels": "non-finite or masked pixels, set to 0 (background) before encoding",
    "flag_truncated": "the stamp runs over the edge of its field; the missing part is set to 0",
    "flag_adapted": "the stamp was centre-cropped or zero-padded to the model's size",
    "flag_empty": "no finite non-zero pixel: nothing to measure, predictions are NaN",
    "flag_out_of_range": "a prediction outside the training range, or pixels brighter than any "
                         "the model was trained on",
}

FIELD_COLUMNS = {
    "x_field": ("pix", "detection centre column in the field (pixel centres at i + 0.5)"),
    "y_field": ("pix", "detection centre row in the field (pixel centres at j + 0.5)"),
    "ra": ("deg", "right ascension of the detection (ICRS)"),
    "dec": ("deg", "declination of the detection (ICRS)"),
}


@dataclass(frozen=True)
class InferOptions:
    """What changes the numbers in a catalog (and so the identity of its parts)."""

    samples: int = 1  # MC-dropout passes; 1 = plain encoder with held-out errors
    adapt_size: bool = False  # centre-crop / zero-pad stamps of another size
    batch_size: int | None = None  # None: the model's device default (32 on CPU)
    seed: int = 0  # MC-dropout draws, per chunk
    reconstruct: bool = False
    device: str = "auto"


def catalog_columns(model_meta: dict, has_field: bool) -> list[tuple[str, pa.DataType, str, str]]:
    """``(name, arrow type, unit, description)`` of every catalog column, in order."""
    cols = [("id", pa.int64(), "", "row number in this catalog"),
            ("source", pa.string(), "", "input file or dataset the stamp came from"),
            ("index", pa.int64(), "", "stamp index in its cube or dataset, or detection number "
                                      "in its field (0 for a single-stamp file)")]
    if has_field:
        cols += [(name, pa.float64(), unit, text) for name, (unit, text) in FIELD_COLUMNS.items()]
    for name in model_meta["parameter_scaling"]["names"]:
        unit = unit_of(name)
        cols += [(name, pa.float64(), unit, f"predicted {name.replace('_', ' ')}"),
                 (f"{name}_err", pa.float64(), unit, f"1-sigma uncertainty of {name}")]
    cols += [(name, pa.bool_(), "", text) for name, text in FLAGS.items()]
    return cols


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


def measure(model: TrainedModel, images: np.ndarray, *, samples: int = 1, batch_size: int | None = None,
            generator: torch.Generator | None = None, latents: bool = False) -> dict[str, np.ndarray]:
    """Predicted parameters and ``<name>_err`` of finite ADU stamps ``(N, H, W)``.

    ``samples == 1``: one encoder pass, errors from the held-out residuals in ``model.json``.
    ``samples > 1``: MC dropout, the mean and standard deviation of ``samples`` draws of the
    dropout mask on the encoder features (the convolutions run once). ``latents=True`` adds
    the full latent vectors (for reconstructions).
    """
    net = model.network.eval()
    n_sup = len(model.supervised)
    p = net.arch.dropout
    check_samples(model, samples)
    z_mean, z_std, z_all = [], [], []
    step = batch_size or model.batch_size
    with torch.inference_mode():
        for i in range(0, len(images), step):  # normalised per batch: memory stays small
            h = net.encoder(model.to_input(images[i:i + step]))
            if latents:
                z_all.append(net.heads(h).float().cpu().numpy())
            if samples == 1:
                z_mean.append(net.to_phys(h).float().cpu().numpy())
                continue
            draws = torch.stack([
                net.to_phys(h * (torch.rand(h.shape, generator=generator).to(h.device) >= p) / (1 - p))
                for _ in range(samples)])
            z_mean.append(draws.mean(0).float().cpu().numpy())
            z_std.append(draws.std(0).float().cpu().numpy())
    empty = np.empty((0, n_sup), np.float32)
    z = np.concatenate(z_mean) if z_mean else empty
    if samples > 1:
        sigma_z = np.concatenate(z_std) if z_std else empty
    else:
        sigma_z = HeldoutScatter.from_dict(model.meta["heldout_scatter"]).latent_sigma(z)
    values = model.scaling.to_physical(z)
    errors = physical_sigma(model.scaling, z, sigma_z)
    out = {}
    for name in model.supervised:
        out[name], out[f"{name}_err"] = values[name], errors[name]
    if latents:
        out["latents"] = np.concatenate(z_all) if z_all else np.empty((0, net.arch.latent_dim))
    return out


def check_samples(model: TrainedModel, samples: int, where="the model") -> None:
    """Refuse an uncertainty method the model cannot give."""
    if samples > 1 and model.network.arch.dropout <= 0:
        raise InputError(f"--samples {samples} needs a model trained with dropout > 0 "
                         f"(galcae train ... dropout=0.1); {where} has none")
    if samples == 1 and "heldout_scatter" not in model.meta:
        raise InputError(f"{where} has no held-out error model (trained by an older galcae); "
                         "retrain it, or use --samples K with a dropout model")


def infer_chunk(meta_path: str, sha: str, chunk, number: int, first_id: int, options: InferOptions,
                parts: str, columns: list) -> int:
    """Read, measure and write one chunk as ``part-NNNNNN.parquet`` (atomically); return its rows."""
    model = worker_model(meta_path, sha, options.device)
    size = model.network.arch.stamp_size
    stamps = chunk.read(size, options.adapt_size)
    images = stamps.images
    n = len(images)
    # Two passes over the pixels give every per-stamp check (NaN and inf propagate to them).
    brightest, faintest = images.reshape(n, -1).max(axis=1), images.reshape(n, -1).min(axis=1)
    bad = ~(np.isfinite(brightest) & np.isfinite(faintest))
    if bad.any():  # copy only the stamps that need it
        images[bad] = np.nan_to_num(images[bad], nan=0.0, posinf=0.0, neginf=0.0)
        brightest[bad], faintest[bad] = images[bad].max(axis=(1, 2)), images[bad].min(axis=(1, 2))
    nan_pixels = bad & ~stamps.truncated
    empty = (brightest == 0) & (faintest == 0)
    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + number)
    result = measure(model, images[~empty], samples=options.samples, batch_size=options.batch_size,
                     generator=generator, latents=options.reconstruct)

    table = {"id": np.arange(first_id, first_id + n), **stamps.columns}
    out_of_range = brightest > model.normalization.ceiling
    training_range = model.meta.get("training_range", {})
    for name in model.supervised:
        for key in (name, f"{name}_err"):
            table[key] = np.full(n, np.nan)
            table[key][~empty] = result[key]
        if name in training_range:
            lo, hi = training_range[name]
            with np.errstate(invalid="ignore"):
                out_of_range |= (table[name] < lo) | (table[name] > hi)
    table.update(flag_nan_pixels=nan_pixels, flag_truncated=stamps.truncated,
                 flag_adapted=stamps.adapted, flag_empty=empty, flag_out_of_range=out_of_range)

    parts = Path(parts)
    if options.reconstruct:
        recon = np.full(images.shape, np.nan, np.float32)
        recon[~empty] = model.decode(result["latents"], options.batch_size)
        _atomic_save(parts / f"recon-{number:06d}.npy", lambda p: np.save(p, recon))
    schema = pa.schema([pa.field(name, dtype) for name, dtype, _, _ in columns])
    arrow = pa.Table.from_pydict({name: table.get(name, np.full(n, np.nan)) for name, *_ in columns},
                                 schema=schema)
    _atomic_save(part_path(parts, number), lambda p: pq.write_table(arrow, p))
    return n


def part_path(parts: Path, number: int) -> Path:
    return Path(parts) / f"part-{number:06d}.parquet"


def _atomic_save(path: Path, write) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps the suffix (np.save adds one)
    write(tmp)
    os.replace(tmp, path)


# --- the whole catalog ----------------------------------------------------------------------


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
    out = Path(out)
    if not out.name.lower().endswith(OUTPUT_SUFFIXES):
        raise InputError(f"{out}: catalog must end in .parquet or .fits")
    if reconstruct_to is not None:
        options = InferOptions(**{**asdict(options), "reconstruct": True})
        if not str(reconstruct_to).lower().endswith((".fits", ".zarr")):
            raise InputError(f"{reconstruct_to}: reconstructions must go to a .fits or .zarr path")
    for target in filter(None, (out, reconstruct_to and Path(reconstruct_to))):
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} already exists; choose another path or pass --overwrite")
    if chunk_size < 1:
        raise InputError(f"chunk_size {chunk_size} must be at least 1")
    if options.samples < 1:
        raise InputError(f"--samples {options.samples} must be at least 1")

    model = load_model(model_path, device="cpu")
    _, meta_path = model_paths(model_path)
    sha = model.meta["weights_sha256"]
    check_samples(model, options.samples, meta_path)

    parts = out.with_name(f"{out.name}.parts")
    signature = _signature(sha, inputs, chunk_size, options, hdu, detect_threshold)
    _prepare_parts(parts, signature)
    pixel_scale = model.meta["dataset"]["simulate"]["pixel_scale"]
    plan = plan_inputs(inputs, stamp_size=model.network.arch.stamp_size, pixel_scale=pixel_scale,
                       chunk_size=chunk_size, work_dir=parts, hdu=hdu,
                       detect_threshold=detect_threshold)
    for warning in plan.warnings:
        log.warning(warning)
    if not plan.chunks:
        raise InputError("no stamps to measure" + (f": {'; '.join(plan.warnings)}" if plan.warnings else ""))

    columns = catalog_columns(model.meta, plan.has_field)
    first_ids = np.concatenate([[0], np.cumsum(plan.rows)[:-1]]).astype(int)
    todo = [i for i in range(len(plan.chunks)) if not part_path(parts, i).exists()
            or (options.reconstruct and not (parts / f"recon-{i:06d}.npy").exists())]
    if len(todo) < len(plan.chunks):
        echo(f"Resuming: {len(plan.chunks) - len(todo)} of {len(plan.chunks)} chunks already done")
    args = [(str(meta_path.resolve()), sha, plan.chunks[i], i, int(first_ids[i]), options,
             str(parts.resolve()), columns) for i in todo]
    with dask_client(workers, scheduler) as client:
        for _ in map_chunks(infer_chunk, args, client, desc="infer", total=sum(plan.rows),
                            unit_scale=[plan.rows[i] for i in todo]):
            pass

    meta = _catalog_meta(model, meta_path, plan, inputs, options)
    write_catalog(out, [part_path(parts, i) for i in range(len(plan.chunks))], columns, meta, plan)
    if options.reconstruct:
        write_reconstructions(Path(reconstruct_to), parts, len(plan.chunks), model, overwrite)
    flags = _flag_counts([part_path(parts, i) for i in range(len(plan.chunks))])
    shutil.rmtree(parts, ignore_errors=True)
    return {"rows": int(sum(plan.rows)), "chunks": len(plan.chunks), "skipped": len(plan.chunks) - len(todo),
            "catalog": str(out), "reconstructions": str(reconstruct_to) if reconstruct_to else None,
            "flags": flags, "uncertainty": meta["uncertainty"], "warnings": plan.warnings}


def _signature(sha, inputs, chunk_size, options, hdu, threshold) -> str:
    """What makes finished parts reusable: the model, the inputs as they are now, the options."""
    stamp = []
    for item in inputs:
        path = Path(item)
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        stamp += [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns)
                  for f in files if f.is_file()] or [str(item)]
    text = json.dumps([sha, stamp, chunk_size, asdict(options), hdu, threshold, __version__],
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _prepare_parts(parts: Path, signature: str) -> None:
    """Keep ``parts`` if it belongs to this exact command, else start it afresh."""
    marker = parts / "signature"
    if parts.exists() and not (marker.exists() and marker.read_text() == signature):
        log.info("%s holds parts of another command; starting afresh", parts)
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    marker.write_text(signature)


def _catalog_meta(model: TrainedModel, meta_path: Path, plan: Plan, inputs, options) -> dict:
    return {
        "format": FORMAT,
        "galcae_version": __version__,
        "model": str(meta_path),
        "model_sha256": model.meta["weights_sha256"],
        "model_epochs": model.meta.get("epoch"),
        "inputs": [str(i) for i in inputs],
        "uncertainty": ("mc_dropout" if options.samples > 1 else "heldout"),
        "samples": options.samples,
        "flags": FLAGS,
    }


def write_catalog(out: Path, part_files: list[Path], columns, meta: dict, plan: Plan) -> None:
    """Stream the parts into one Parquet file (astropy-readable units), or a FITS table."""
    from astropy.table import QTable
    from astropy.table import meta as table_meta

    empty = QTable()
    for name, dtype, unit, text in columns:
        empty[name] = np.zeros(0, dtype=_numpy_dtype(dtype))
        if unit:
            empty[name].unit = unit
        empty[name].info.description = text
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        empty.meta.update(meta)
        longest = max((len(s) for c in plan.chunks for s in _sources_of(c)), default=1)
        schema = pa.schema([pa.field(n, t, metadata={"unit": u, "description": d})
                            for n, t, u, d in columns],
                           metadata={"table_meta_yaml": "\n".join(table_meta.get_yaml_from_table(empty)),
                                     "table::len::source": str(longest), "galcae": json.dumps(meta)})
        with pq.ParquetWriter(tmp, schema) as writer:
            for part in part_files:
                writer.write_table(pq.read_table(part).cast(schema))
    else:
        table = pa.concat_tables([pq.read_table(p) for p in part_files])
        cat = QTable({name: table.column(name).to_numpy(zero_copy_only=False).astype(_numpy_dtype(dtype))
                      for name, dtype, *_ in columns})
        for name, _, unit, text in columns:
            if unit:
                cat[name].unit = unit
            cat[name].info.description = text
        cat.meta.update({"GALCAE": __version__, "MODELSHA": meta["model_sha256"],
                         "UNCERT": meta["uncertainty"], "SAMPLES": meta["samples"],
                         "comments": [f"model: {meta['model']}", *[f"input: {i}" for i in meta["inputs"]],
                                      *[f"{k}: {v}" for k, v in FLAGS.items()]]})
        cat.write(tmp, format="fits")
    os.replace(tmp, out)


def _numpy_dtype(arrow_type: pa.DataType):
    """numpy dtype of an arrow column type (``str`` for strings), without importing pandas."""
    return str if arrow_type == pa.string() else pa.array([], arrow_type).to_numpy(zero_copy_only=False).dtype


def _sources_of(chunk) -> list[str]:
    return list(getattr(chunk, "sources", None) or [chunk.source])


def write_reconstructions(path: Path, parts: Path, n_chunks: int, model: TrainedModel,
                          overwrite: bool) -> None:
    """Concatenate the per-chunk reconstructions into a Zarr array or a FITS cube (streamed)."""
    files = [parts / f"recon-{i:06d}.npy" for i in range(n_chunks)]
    n = sum(np.load(f, mmap_mode="r").shape[0] for f in files)
    size = model.network.arch.stamp_size
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if path.suffix == ".zarr":
        import zarr

        array = zarr.create_array(store=str(tmp), shape=(n, size, size), dtype="float32",
                                  chunks=(min(n, 1024), size, size))
        array.attrs.update({"unit": "adu", "model_sha256": model.meta["weights_sha256"]})
        start = 0
        for f in files:
            block = np.load(f)
            array[start:start + len(block)] = block
            start += len(block)
    else:
        from astropy.io import fits

        header = fits.Header()
        header.update({"SIMPLE": True, "BITPIX": -32, "NAXIS": 3, "NAXIS1": size, "NAXIS2": size,
                       "NAXIS3": n, "BUNIT": "adu", "MODELSHA": model.meta["weights_sha256"][:16]})
        stream = fits.StreamingHDU(tmp, header)
        for f in files:
            stream.write(np.load(f).astype(">f4"))
        stream.close()
    if path.exists() and overwrite:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.replace(tmp, path)


def _flag_counts(part_files: list[Path]) -> dict[str, int]:
    counts = dict.fromkeys(FLAGS, 0)
    for part in part_files:
        table = pq.read_table(part, columns=list(FLAGS))
        for name in FLAGS:
            counts[name] += int(np.count_nonzero(table.column(name).to_numpy(zero_copy_only=False)))
    return counts
