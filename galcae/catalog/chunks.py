"""Chunked, resumable catalogs: what ``galcae infer`` and ``galcae fit`` share.

The inputs are planned into chunks (:mod:`galcae.catalog.sources`); each chunk is read, measured
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
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from .. import __version__
from ..distributed import dask_client, map_chunks
from ..outputs import output_locks, refuse_existing, refuse_overlap
from .conditions_table import read_conditions, with_conditions
from .psf import read_psf, with_file_psfs, with_psf
from .sources import InputError, Plan, expand_inputs, plan_inputs
from .writers import FORMAT, Column, flag_counts, part_path, write_catalog

log = logging.getLogger(__name__)


def build_catalog(task: Callable, inputs, out: Path, *, columns_for: Callable[[bool], list[Column]],
                  meta: dict, options: dict, stamp_size: int, pixel_scale: float, workers: int = 1,
                  scheduler: str | None = None, chunk_size: int = 4096, hdu=None,
                  detect_threshold: float = 3.0, desc: str = "measure", extra_files=lambda parts, i: (),
                  fits_keys: dict[str, str] | None = None, overwrite: bool = False,
                  also_writes: dict[str, Path | None] | None = None,
                  after: Callable[[Path, Plan], None] | None = None, conditions=None, psf=None,
                  echo=log.info) -> dict:
    """Plan ``inputs``, run ``task(chunk, number, first_id, parts, columns)`` on every chunk
    not already done, and write the catalog ``out``.

    The catalog (and ``also_writes``, ``{option: path}`` of other outputs) is locked while
    it is made, and refused if it exists (unless ``overwrite``) or overlaps an input.
    ``options`` (JSON-able) and the inputs' sizes and times identify the run: parts of
    another run are discarded. ``extra_files(number)`` names files a chunk must also have
    written to count as done; ``after(parts, plan)`` runs before the parts are removed.
    ``conditions``: a table of every stamp's observing conditions (``--conditions``, see
    :mod:`galcae.catalog.conditions_table`); ``psf``: a file of PSF images (``--psf``, see
    :mod:`galcae.catalog.psf`).
    """
    if chunk_size < 1:
        raise InputError(f"chunk_size {chunk_size} must be at least 1")
    outputs = {"-o": out, **(also_writes or {})}
    extra_inputs = [Path(p) for p in (conditions, psf) if p is not None]
    refuse_overlap(outputs, [*expand_inputs(inputs), *extra_inputs])
    table = read_conditions(conditions) if conditions else None
    psf_images, psf_hdu = read_psf(psf, stamp_size, pixel_scale) if psf else (None, None)
    with output_locks(*outputs.values()):
        for path in outputs.values():
            if path is not None:
                refuse_existing(Path(path), overwrite)
        parts = out.with_name(f"{out.name}.parts")
        signed = [*inputs, *extra_inputs]  # a changed table or PSF: parts redone
        _prepare_parts(parts, _signature(signed, {**options, "chunk_size": chunk_size, "hdu": hdu,
                                                  "detect_threshold": detect_threshold}))
        with _discarded_if_nothing_done(parts):
            plan = plan_inputs(inputs, stamp_size=stamp_size, pixel_scale=pixel_scale,
                               chunk_size=chunk_size, work_dir=parts, hdu=hdu,
                               detect_threshold=detect_threshold)
            _check_planned(plan, inputs)
            with_file_psfs(plan, stamp_size, pixel_scale)  # the files' own PSF HDUs, beneath --psf
            if psf_images is not None:  # beneath the table, which takes precedence
                with_psf(plan, psf_images, pixel_scale, psf, psf_hdu, stamp_size)
            if table is not None:
                with_conditions(plan, table, conditions)
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


def _check_planned(plan: Plan, inputs) -> None:
    """Log the planning's warnings; refuse inputs that hold no stamp at all."""
    for warning in plan.warnings:
        log.warning(warning)
    if not plan.chunks:
        raise InputError("no stamps to measure in " + (
            "; ".join(plan.warnings) if plan.warnings else ", ".join(map(str, inputs))))


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


