"""Chunked, resumable catalogs: what ``galcae infer`` and ``galcae fit`` share.

The inputs are planned into chunks (:mod:`galcae.sources`); each chunk is read, measured
and written as its own Parquet part by whoever runs it (this process or a Dask worker).
Parts live in ``CATALOG.parts/`` until every chunk is done; re-running the same command
skips the parts already there, and only then are the parts streamed into the catalog
(Parquet or FITS), so an interruption loses at most the chunks in flight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .conditions import border_pixels, stamp_noise_sigma
from .distributed import dask_client, map_chunks
from .outputs import atomic_file, output_locks, refuse_existing, refuse_overlap
from .sources import InputError, Plan, Stamps, expand_inputs, plan_inputs

log = logging.getLogger(__name__)

FORMAT = "galcae-catalog/1"
OUTPUT_SUFFIXES = (".parquet", ".fits", ".fit")

#: Per-row flags of every catalog; ``True`` means the condition holds. Rows are never dropped.
STAMP_FLAGS = {
    "flag_nan_pixels": "non-finite, masked or impossible pixels (below -10 noise sigma, e.g. -1e30 "
                       "blanks), set to 0 (background) before measuring",
    "flag_truncated": "the stamp runs over the edge of its field; the missing part is set to 0",
    "flag_adapted": "the stamp was centre-cropped or zero-padded to the expected size",
    "flag_empty": "no finite non-zero pixel: nothing to measure, values are NaN",
    "flag_unmeasurable": "not a sky-subtracted image: under half its pixels usable, or its border's "
                         "median below -3 noise sigma; values are NaN",
    "flag_background": "the border's median is above +3 noise sigma: sky left in the image, or "
                       "light beyond the stamp's edge; values may be biased",
}

#: Pixels further below zero than this many noise sigmas cannot come from a sky-subtracted
#: image (noise that deep has odds of 1e-23); they are blanks (SExtractor's -1e30, say) or damage.
IMPOSSIBLE_SIGMA = 10.0
#: A border median further from zero than this many noise sigmas is not a subtracted sky.
BACKGROUND_SIGMA = 3.0
#: Stamps with fewer usable pixels than this fraction are not measured.
MIN_USABLE_FRACTION = 0.5
#: Noise sigmas are floored at this fraction of the brightest pixel, so that noiseless
#: images (simulations) are judged by their own scale.
NOISE_FLOOR = 1e-4

FIELD_COLUMNS = {
    "x_field": ("pix", "detection centre column in the field (pixel centres at i + 0.5)"),
    "y_field": ("pix", "detection centre row in the field (pixel centres at j + 0.5)"),
    "ra": ("deg", "right ascension of the detection (ICRS)"),
    "dec": ("deg", "declination of the detection (ICRS)"),
}

Column = tuple[str, pa.DataType, str, str]  # name, arrow type, unit, description


def id_columns(has_field: bool) -> list[Column]:
    """The columns that say which stamp a row is."""
    cols = [("id", pa.int64(), "", "row number in this catalog"),
            ("source", pa.string(), "", "input file or dataset the stamp came from"),
            ("index", pa.int64(), "", "stamp index in its cube or dataset, or detection number "
                                      "in its field (0 for a single-stamp file)")]
    if has_field:
        cols += [(name, pa.float64(), unit, text) for name, (unit, text) in FIELD_COLUMNS.items()]
    return cols


def flag_columns(flags: dict[str, str]) -> list[Column]:
    return [(name, pa.bool_(), "", text) for name, text in flags.items()]


@dataclass
class CleanStamps:
    """Stamps ready to measure, with what was found on the way."""

    images: np.ndarray  # finite ADU (unusable pixels set to 0)
    brightest: np.ndarray  # per stamp, max pixel
    noise_sigma: np.ndarray  # per stamp, measured on the raw border (galcae.conditions)
    flags: dict[str, np.ndarray]  # STAMP_FLAGS

    @property
    def measurable(self) -> np.ndarray:
        """Stamps with something to measure that is a sky-subtracted image."""
        return ~(self.flags["flag_empty"] | self.flags["flag_unmeasurable"])


def clean(stamps: Stamps) -> CleanStamps:
    """Zero the unusable pixels (non-finite, or impossibly far below zero) and flag NaN,
    truncated, adapted, empty, unmeasurable and background-offset stamps.

    A measurable stamp is a sky-subtracted image: at least half its pixels usable and the
    median of its usable border pixels (the sky) no lower than -3 noise sigma."""
    images = stamps.images
    n = len(images)
    noise = stamp_noise_sigma(images)  # on the raw pixels, as the conditions are measured
    # Two passes over the pixels give every per-stamp check (NaN and inf propagate to them).
    brightest, faintest = images.reshape(n, -1).max(axis=1), images.reshape(n, -1).min(axis=1)
    bad = ~(np.isfinite(brightest) & np.isfinite(faintest))
    peak = brightest.copy()
    if bad.any():
        peak[bad] = np.where(np.isfinite(images[bad]), images[bad], -np.inf).max(axis=(1, 2))
    scale = np.fmax(np.nan_to_num(noise), NOISE_FLOOR * np.clip(peak, 0.0, None))
    floor = -IMPOSSIBLE_SIGMA * scale
    bad |= faintest < floor
    border = border_pixels(images)
    usable = np.ones(n)
    if bad.any():  # copy only the stamps that need it
        rows = images[bad]
        unusable = ~np.isfinite(rows) | (rows < floor[bad, None, None])
        usable[bad] = 1.0 - unusable.reshape(len(rows), -1).mean(axis=1)
        border[bad] = np.where(border_pixels(unusable), np.nan, border[bad])
        rows[unusable] = 0.0
        images[bad] = rows
        brightest[bad], faintest[bad] = rows.max(axis=(1, 2)), rows.min(axis=(1, 2))
    sky = np.median(border, axis=1)
    if bad.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no usable border: NaN, unmeasurable
            sky[bad] = np.nanmedian(border[bad], axis=1)
    with np.errstate(invalid="ignore"):
        sky_low = ~(sky >= -BACKGROUND_SIGMA * scale)
        sky_high = sky > BACKGROUND_SIGMA * scale
    return CleanStamps(images, brightest, noise, {
        "flag_nan_pixels": bad & ~stamps.truncated, "flag_truncated": stamps.truncated,
        "flag_adapted": stamps.adapted, "flag_empty": (brightest == 0) & (faintest == 0),
        "flag_unmeasurable": (usable < MIN_USABLE_FRACTION) | sky_low, "flag_background": sky_high})


def part_path(parts: Path, number: int) -> Path:
    return Path(parts) / f"part-{number:06d}.parquet"


def atomic_save(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename onto ``path``: readers never see half a file."""
    with atomic_file(path) as tmp:
        write(tmp)


def write_part(parts, number: int, table: dict[str, np.ndarray], columns: list[Column]) -> int:
    """One chunk's rows as ``part-NNNNNN.parquet`` (missing columns NaN); return the row count."""
    n = len(table["id"])
    schema = pa.schema([pa.field(name, dtype) for name, dtype, _, _ in columns])
    arrow = pa.Table.from_pydict({name: table.get(name, np.full(n, np.nan)) for name, *_ in columns},
                                 schema=schema)
    atomic_save(part_path(parts, number), lambda p: pq.write_table(arrow, p))
    return n


def catalog_path(out) -> Path:
    """The catalog path, if it has a catalog suffix (any case)."""
    out = Path(out)
    if not out.name.lower().endswith(OUTPUT_SUFFIXES):
        raise InputError(f"{out}: catalog must end in .parquet or .fits")
    return out


def is_parquet(path: Path) -> bool:
    return Path(path).suffix.lower() == ".parquet"


def build_catalog(task: Callable, inputs, out: Path, *, columns_for: Callable[[bool], list[Column]],
                  meta: dict, options: dict, stamp_size: int, pixel_scale: float, workers: int = 1,
                  scheduler: str | None = None, chunk_size: int = 4096, hdu=None,
                  detect_threshold: float = 3.0, desc: str = "measure", extra_files=lambda parts, i: (),
                  fits_keys: dict[str, str] | None = None, overwrite: bool = False,
                  also_writes: dict[str, Path | None] | None = None,
                  after: Callable[[Path, Plan], None] | None = None, echo=log.info) -> dict:
    """Plan ``inputs``, run ``task(chunk, number, first_id, parts, columns)`` on every chunk
    not already done, and write the catalog ``out``.

    The catalog (and ``also_writes``, ``{option: path}`` of other outputs) is locked while
    it is made, and refused if it exists (unless ``overwrite``) or overlaps an input.
    ``options`` (JSON-able) and the inputs' sizes and times identify the run: parts of
    another run are discarded. ``extra_files(number)`` names files a chunk must also have
    written to count as done; ``after(parts, plan)`` runs before the parts are removed.
    """
    if chunk_size < 1:
        raise InputError(f"chunk_size {chunk_size} must be at least 1")
    outputs = {"-o": out, **(also_writes or {})}
    refuse_overlap(outputs, expand_inputs(inputs))
    with output_locks(*outputs.values()):
        for path in outputs.values():
            if path is not None:
                refuse_existing(Path(path), overwrite)
        parts = out.with_name(f"{out.name}.parts")
        _prepare_parts(parts, _signature(inputs, {**options, "chunk_size": chunk_size, "hdu": hdu,
                                                  "detect_threshold": detect_threshold}))
        with _discarded_if_nothing_done(parts):
            plan = plan_inputs(inputs, stamp_size=stamp_size, pixel_scale=pixel_scale,
                               chunk_size=chunk_size, work_dir=parts, hdu=hdu,
                               detect_threshold=detect_threshold)
            for warning in plan.warnings:
                log.warning(warning)
            if not plan.chunks:
                raise InputError("no stamps to measure in " + (
                    "; ".join(plan.warnings) if plan.warnings else ", ".join(map(str, inputs))))

            columns = columns_for(plan.has_field)
            first_ids = np.concatenate([[0], np.cumsum(plan.rows)[:-1]]).astype(int)
            todo = [i for i in range(len(plan.chunks))
                    if not all(f.exists() for f in (part_path(parts, i), *extra_files(parts, i)))]
            if len(todo) < len(plan.chunks):
                echo(f"Resuming: {len(plan.chunks) - len(todo)} of {len(plan.chunks)} chunks already done")
            args = [(plan.chunks[i], i, int(first_ids[i]), str(parts.resolve()), columns) for i in todo]
            with dask_client(workers, scheduler) as client:
                for _ in map_chunks(task, args, client, desc=desc, total=sum(plan.rows),
                                    unit_scale=[plan.rows[i] for i in todo]):
                    pass

        part_files = [part_path(parts, i) for i in range(len(plan.chunks))]
        meta = {"format": FORMAT, "galcae_version": __version__, "inputs": [str(i) for i in inputs], **meta}
        write_catalog(out, part_files, columns, meta, fits_keys)
        if after is not None:
            after(parts, plan)
        counts = flag_counts(part_files, [name for name, dtype, *_ in columns if dtype == pa.bool_()])
        shutil.rmtree(parts, ignore_errors=True)
    return {"rows": int(sum(plan.rows)), "chunks": len(plan.chunks), "skipped": len(plan.chunks) - len(todo),
            "catalog": str(out), "flags": {k: v for k, v in counts.items() if k.startswith("flag_")},
            "true_counts": {k: v for k, v in counts.items() if not k.startswith("flag_")},
            "warnings": plan.warnings}


@contextmanager
def _discarded_if_nothing_done(parts: Path):
    """Remove ``parts`` if the block fails before any chunk was written: nothing to resume."""
    try:
        yield
    except BaseException:
        if not any(parts.glob("part-*.parquet")):
            shutil.rmtree(parts, ignore_errors=True)
        raise


def _signature(inputs, options: dict) -> str:
    """What makes finished parts reusable: the inputs as they are now and the options."""
    stamp = []
    for item in inputs:
        path = Path(item)
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        stamp += [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns)
                  for f in files if f.is_file()] or [str(item)]
    text = json.dumps([stamp, options, __version__], default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _prepare_parts(parts: Path, signature: str) -> None:
    """Keep ``parts`` if it belongs to this exact command, else start it afresh."""
    marker = parts / "signature"
    if parts.exists() and not (marker.exists() and marker.read_text() == signature):
        log.info("%s holds parts of another command; starting afresh", parts)
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    marker.write_text(signature)


def write_catalog(out: Path, part_files: list[Path], columns: list[Column], meta: dict,
                  fits_keys: dict[str, str] | None = None) -> None:
    """Stream the parts into one Parquet file (astropy-readable units), or a FITS table.

    In FITS, the metadata named in ``fits_keys`` (meta key -> keyword) become header
    keywords, the rest COMMENT cards."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        _write_table(tmp, is_parquet(out), part_files, columns, meta, fits_keys or {})


def _write_table(tmp: Path, parquet: bool, part_files, columns, meta, fits_keys) -> None:
    from astropy.table import QTable
    from astropy.table import meta as table_meta

    if parquet:
        empty = _with_units(QTable({name: np.zeros(0, _numpy_dtype(dtype)) for name, dtype, *_ in columns}),
                            columns)
        empty.meta.update(meta)
        # astropy sizes string columns from these (a first pass over the parts' strings only).
        lengths = {f"table::len::{name}": str(_longest(part_files, name))
                   for name, dtype, *_ in columns if dtype == pa.string()}
        schema = pa.schema([pa.field(n, t, metadata={"unit": u, "description": d})
                            for n, t, u, d in columns],
                           metadata={"table_meta_yaml": "\n".join(table_meta.get_yaml_from_table(empty)),
                                     **lengths, "galcae": json.dumps(meta)})
        with pq.ParquetWriter(tmp, schema) as writer:
            for part in part_files:
                writer.write_table(pq.read_table(part).cast(schema))
    else:  # FITS tables are assembled in memory (~100 bytes a row)
        table = pa.concat_tables([pq.read_table(p) for p in part_files])
        cat = _with_units(QTable({name: table.column(name).to_numpy(zero_copy_only=False).astype(
            _numpy_dtype(dtype)) for name, dtype, *_ in columns}), columns)
        keys = {"galcae_version": "GALCAE", **fits_keys}
        cat.meta.update({keys[k]: v for k, v in meta.items() if k in keys})
        cat.meta["comments"] = [f"{k}: {json.dumps(v)}" for k, v in meta.items() if k not in keys]
        cat.write(tmp, format="fits")


def _with_units(table, columns: list[Column]):
    for name, _, unit, text in columns:
        if unit:
            table[name].unit = unit
        table[name].info.description = text
    return table


def _numpy_dtype(arrow_type: pa.DataType):
    """numpy dtype of an arrow column type (``str`` for strings), without importing pandas."""
    return str if arrow_type == pa.string() else pa.array([], arrow_type).to_numpy(zero_copy_only=False).dtype


def _longest(part_files: list[Path], name: str) -> int:
    import pyarrow.compute as pc

    return max([1] + [pc.max(pc.utf8_length(pq.read_table(p, columns=[name]).column(name))).as_py() or 1
                      for p in part_files])


def flag_counts(part_files: list[Path], flags: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(flags, 0)
    for part in part_files:
        table = pq.read_table(part, columns=flags)
        for name in flags:
            counts[name] += int(np.count_nonzero(table.column(name).to_numpy(zero_copy_only=False)))
    return counts
