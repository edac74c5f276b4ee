"""Catalog files: one Parquet part per chunk, then the catalog (Parquet or FITS) streamed from
them, every column with its unit and description and the run's metadata (Parquet key-value
metadata, FITS header keywords and comments)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..outputs import atomic_file
from .sources import InputError

FORMAT = "galcae-catalog/1"


OUTPUT_SUFFIXES = (".parquet", ".fits", ".fit")


FIELD_COLUMNS = {
    "x_field": ("pix", "detection centre column in the field (pixel centres at i + 0.5)"),
    "y_field": ("pix", "detection centre row in the field (pixel centres at j + 0.5)"),
    "ra": ("deg", "right ascension of the detection (ICRS)"),
    "dec": ("deg", "declination of the detection (ICRS)"),
}


NEIGHBOUR_INDEX = ("the index of the nearest other source detected in the same field, if its centre is inside "
                   "this row's cutout (-1: none, or not a field's row)")

Column = tuple[str, pa.DataType, str, str]  # name, arrow type, unit, description


def id_columns(has_field: bool) -> list[Column]:
    """The columns that say which stamp a row is."""
    cols = [("id", pa.int64(), "", "row number in this catalog"),
            ("source", pa.string(), "", "input file or dataset the stamp came from"),
            ("index", pa.int64(), "", "stamp index in its cube or dataset, or detection number "
                                      "in its field (0 for a single-stamp file)")]
    if has_field:
        cols += [(name, pa.float64(), unit, text) for name, (unit, text) in FIELD_COLUMNS.items()]
        cols.append(("neighbour_index", pa.int64(), "", NEIGHBOUR_INDEX))
    return cols


def flag_columns(flags: dict[str, str]) -> list[Column]:
    return [(name, pa.bool_(), "", text) for name, text in flags.items()]


def part_path(parts: Path, number: int) -> Path:
    return Path(parts) / f"part-{number:06d}.parquet"


def atomic_save(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename onto ``path``: readers never see half a file."""
    with atomic_file(path) as tmp:
        write(tmp)


def write_part(parts, number: int, table: dict[str, np.ndarray], columns: list[Column]) -> int:
    """One chunk's rows as ``part-NNNNNN.parquet`` (missing columns NaN, -1 for integers: a
    stamp's row in a catalog that also holds fields has no field columns); return the row count."""
    n = len(table["id"])
    schema = pa.schema([pa.field(name, dtype) for name, dtype, _, _ in columns])
    arrow = pa.Table.from_pydict({name: table[name] if name in table else
                                  np.full(n, -1 if pa.types.is_integer(dtype) else np.nan)
                                  for name, dtype, *_ in columns}, schema=schema)
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

