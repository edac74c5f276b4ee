"""``--conditions TABLE``: the observing conditions of every stamp, from a table.

A cube of cutouts usually comes with one seeing per stamp, which a FITS header cannot say.
The table (FITS, Parquet or CSV) has one row per stamp and the columns ``psf_fwhm`` (arcsec),
``psf_beta`` (Moffat β) and, optionally, ``noise_sigma`` (ADU; otherwise measured on the
stamp) and ``sky_level`` (ADU per pixel, the classical fit's noise model). Its rows are the
stamps in input order, or are matched by an ``id`` column (the catalog's row number) or by
``source`` and ``index`` columns (as the catalog's: the input file, its path or only its
name, and the stamp's index in it).

Precedence, per condition: a command-line option (``--psf-fwhm``) > the table > the
input's own statement (``PSFFWHM`` / ``PSFBETA`` keywords, or a dataset's truth) > the
noise measured on the stamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..params import CONDITIONS
from .sources import WrappedChunk, same_arrays

#: Condition columns a table may hold.
COLUMNS = ("psf_fwhm", "psf_beta", "noise_sigma", "sky_level")
#: Columns that say which stamp a row is.
KEYS = ("id", "source", "index")


def read_conditions(path) -> dict[str, np.ndarray]:
    """The columns of a conditions table, checked: known names only, at least one condition,
    finite values inside their physical bounds, keys that name each stamp once."""
    path = Path(path)
    columns = _read_table(path)
    unknown = [name for name in columns if name not in COLUMNS + KEYS]
    if unknown:
        raise InputError(f"{path}: unknown column '{unknown[0]}' (a conditions table has "
                         f"{', '.join(COLUMNS)} and optionally {', '.join(KEYS)})")
    if not any(name in columns for name in COLUMNS):
        raise InputError(f"{path}: no condition column (give one or more of {', '.join(COLUMNS)})")
    if ("source" in columns) != ("index" in columns):
        raise InputError(f"{path}: 'source' and 'index' match stamps together; give both or neither")
    for name in COLUMNS:
        if name in columns:
            columns[name] = _checked_values(path, name, columns[name])
    for name in ("id", "index"):
        if name in columns:
            columns[name] = _checked_integers(path, name, columns[name])
    if "source" in columns:
        columns["source"] = np.array([str(s).strip() for s in columns["source"]], dtype=object)
    return columns


def _read_table(path: Path) -> dict[str, np.ndarray]:
    name = path.name.lower()
    if not path.is_file():
        raise InputError(f"{path}: conditions table does not exist")
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            return {c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names}
        from astropy.table import Table

        if name.endswith(".csv"):
            table = Table.read(path, format="ascii.csv")
        elif name.endswith((".fits", ".fit", ".fits.gz")):
            table = Table.read(path, format="fits")
        else:
            raise InputError(f"{path}: a conditions table is .fits, .parquet or .csv")
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - readers raise many kinds; each becomes one line
        raise InputError(f"{path}: cannot be read as a table ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    columns = {}
    for name in table.colnames:
        empty = np.ma.getmaskarray(table[name])  # a CSV's missing value, a FITS null
        if empty.any():
            raise InputError(f"{path}: column '{name}' row {int(np.argmax(empty))} is empty")
        columns[name] = np.asarray(table[name])
    return columns


def _checked_values(path: Path, name: str, values) -> np.ndarray:
    try:
        values = np.asarray(values, float)
    except (TypeError, ValueError):
        raise InputError(f"{path}: column '{name}' holds values that are not numbers") from None
    lo, hi = CONDITIONS[name].bounds
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~((values >= lo) & (values <= hi)))
    if bad.size:
        raise InputError(f"{path}: column '{name}' row {bad[0]} is {float(values[bad[0]])!r}, outside "
                         f"[{lo:g}, {hi:g}] ({bad.size} such rows)")
    return values


def _checked_integers(path: Path, name: str, values) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind not in "iu":
        raise InputError(f"{path}: column '{name}' must hold integers")
    return values.astype(np.int64)


@dataclass(frozen=True, eq=False)
class WithConditions(WrappedChunk):
    """A chunk whose stamps' conditions come from a table (one value per row of the chunk)."""

    chunk: object
    conditions: dict  # name -> (n,) array, in the chunk's row order

    def read(self, size: int, adapt: bool):
        stamps = self.chunk.read(size, adapt)
        stamps.conditions = {**stamps.conditions, **self.conditions}
        return stamps

    def __eq__(self, other) -> bool:
        if not isinstance(other, WithConditions):
            return NotImplemented
        return self.chunk == other.chunk and same_arrays(self.conditions, other.conditions)

    __hash__ = WrappedChunk.__hash__


def with_conditions(plan, table: dict[str, np.ndarray], where) -> None:
    """Give each chunk of ``plan`` its rows of ``table`` (in place: the plan is this run's)."""
    rows = _table_rows(plan, table, where)
    names = [name for name in COLUMNS if name in table]
    first = 0
    for i, (chunk, n) in enumerate(zip(plan.chunks, plan.rows)):
        picked = rows[first:first + n]
        plan.chunks[i] = WithConditions(chunk, {name: table[name][picked] for name in names})
        first += n


def _table_rows(plan, table: dict, where) -> np.ndarray:
    """For each catalog row, the table row that holds its conditions."""
    total = int(sum(plan.rows))
    n_table = len(next(iter(table.values())))
    if "id" in table:
        return _match(table["id"], np.arange(total), [str(i) for i in range(total)], where, "id")
    if "source" in table:
        sources, indices = [], []
        for chunk in plan.chunks:
            s, i = chunk.row_keys()
            sources.extend(s)
            indices.append(np.asarray(i, np.int64))
        indices = np.concatenate(indices) if indices else np.empty(0, np.int64)
        key = _source_key(table["source"], set(sources), where)
        have = [f"{key(s)}#{i}" for s, i in zip(sources, indices)]
        wanted = np.array([f"{key(s)}#{i}" for s, i in zip(table["source"], table["index"])], dtype=object)
        return _match(wanted, np.array(have, dtype=object), have, where, "(source, index)")
    if n_table != total:
        raise InputError(f"{where}: {n_table} rows for {total} stamps (one row per stamp in input order, "
                         "or match them by an 'id' or 'source' + 'index' column)")
    return np.arange(total)


def _source_key(table_sources, input_sources: set, where):
    """How sources compare: by file name when the table gives names only (they must then be
    unique among the inputs), else by resolved path."""
    if all(len(Path(str(s)).parts) == 1 for s in table_sources):
        if len({Path(s).name for s in input_sources}) < len(input_sources):
            raise InputError(f"{where}: two inputs have the same file name; give their paths in 'source'")
        return lambda s: Path(str(s)).name
    return lambda s: str(Path(str(s)).resolve())


def _match(wanted: np.ndarray, have: np.ndarray, labels: list[str], where, key: str) -> np.ndarray:
    """The row of ``wanted`` for each element of ``have``; every one found once, no extra row."""
    position = {}
    for row, value in enumerate(wanted):
        if value in position:
            raise InputError(f"{where}: {key} {value} appears twice")
        position[value] = row
    missing = [label for label, value in zip(labels, have) if value not in position]
    if missing:
        raise InputError(f"{where}: no row for {key} {missing[0]} ({len(missing)} stamps without conditions)")
    used = {position[value] for value in have}
    if len(used) < len(wanted):
        extra = next(value for value in wanted if position[value] not in used)
        raise InputError(f"{where}: row for {key} {extra} matches no stamp of the inputs")
    return np.array([position[value] for value in have], dtype=np.int64)
