"""The on-disk dataset: ``images.zarr`` + ``params.parquet`` + ``config.yaml``.

A dataset directory is written under a temporary name and renamed into place when
complete, so an interrupted run never leaves a half-written dataset behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
import zarr

from . import __version__
from .config import ConfigError, SimConfig, from_dict, read_yaml, to_dict
from .errors import DatasetError
from .params import CONDITIONS, DERIVED, OK, PARAMETERS

IMAGES = "images.zarr"
PARAMS = "params.parquet"
CONFIG = "config.yaml"
FORMAT = "galcae-dataset/1"
#: Columns every ``params.parquet`` has (the truth parameters are checked by the stage that needs them).
REQUIRED_COLUMNS = ("id", "status")

#: Columns that describe the rendering rather than the galaxy.
_BOOKKEEPING = {
    "id": ("", "galaxy index in the dataset"),
    "seed": ("", "noise seed of this galaxy"),
    "snr": ("", "matched-filter S/N of the noiseless image"),
    "flux_in_stamp": ("", "fraction of the flux that falls on the stamp"),
    "status": ("", "'ok', or why GalSim could not render the galaxy"),
}


def column_meta(name: str) -> tuple[str, str]:
    """``(unit, description)`` of a ``params.parquet`` column."""
    spec = {**PARAMETERS, **DERIVED, **CONDITIONS}.get(name)
    return (spec.unit, spec.description) if spec else _BOOKKEEPING.get(name, ("", ""))


def create_image_array(directory: Path, cfg: SimConfig) -> zarr.Array:
    """An empty N x H x W float32 Zarr array chunked like the simulation tasks."""
    size = cfg.stamp_size
    array = zarr.create_array(store=str(directory / IMAGES), shape=(cfg.n_galaxies, size, size),
                              chunks=(min(cfg.chunk_size, cfg.n_galaxies), size, size),
                              dtype="float32", fill_value=np.nan)
    array.attrs.update({"unit": "adu", "pixel_scale_arcsec": cfg.pixel_scale,
                        "sky_subtracted": True})
    return array


def write_params(directory: Path, table: dict[str, np.ndarray], cfg: SimConfig) -> None:
    """Write ``params.parquet`` (units and descriptions in field metadata) and ``config.yaml``."""
    fields, columns = [], []
    for name, values in table.items():
        unit, description = column_meta(name)
        column = pa.array(values)
        fields.append(pa.field(name, column.type,
                               metadata={"unit": unit, "description": description}))
        columns.append(column)
    meta = {"format": FORMAT, "galcae_version": __version__, "n_galaxies": cfg.n_galaxies,
            "stamp_size": cfg.stamp_size, "pixel_scale": cfg.pixel_scale}
    schema = pa.schema(fields, metadata={"galcae": json.dumps(meta)})
    pq.write_table(pa.Table.from_arrays(columns, schema=schema), directory / PARAMS)
    (directory / CONFIG).write_text(yaml.safe_dump({"simulate": to_dict(cfg)}, sort_keys=False))


@dataclass(frozen=True)
class Dataset:
    """A simulated dataset on disk; images are read lazily from Zarr."""

    path: Path

    @classmethod
    def open(cls, path: str | Path) -> "Dataset":
        """Open and validate a dataset directory written by ``galcae simulate``."""
        path = Path(path)
        if not path.is_dir():
            raise DatasetError(f"dataset {path} does not exist or is not a directory")
        missing = [name for name in (IMAGES, PARAMS, CONFIG) if not (path / name).exists()]
        if missing:
            raise DatasetError(f"{path} is not a galcae dataset (missing {', '.join(missing)})")
        dataset = cls(path)
        try:
            meta = json.loads(pq.read_schema(path / PARAMS).metadata[b"galcae"])
        except (KeyError, TypeError, ValueError, pa.ArrowException):
            raise DatasetError(f"{path / PARAMS} has no galcae metadata; not a galcae dataset") from None
        if meta.get("format") != FORMAT:
            raise DatasetError(f"{path / PARAMS}: format {meta.get('format')!r} is not {FORMAT!r}")
        shape = dataset.images.shape
        if len(shape) != 3 or shape[0] != meta["n_galaxies"] or shape[1] != shape[2]:
            raise DatasetError(f"{path / IMAGES}: shape {shape} does not match "
                               f"{meta['n_galaxies']} square stamps")
        missing = [name for name in REQUIRED_COLUMNS if name not in dataset.params]
        if missing:
            raise DatasetError(f"{path / PARAMS} has no '{missing[0]}' column; not a galcae dataset")
        if len(dataset.params["id"]) != shape[0]:
            raise DatasetError(f"{path / PARAMS} has {len(dataset.params['id'])} rows for "
                               f"{shape[0]} images")
        dataset._check_chunks_present()
        return dataset

    def _chunk_rows(self, key: tuple[int, ...]) -> slice:
        step = self.images.chunks[0]
        return slice(key[0] * step, min((key[0] + 1) * step, len(self)))

    def _chunk_name(self, key: tuple[int, ...]) -> str:
        rows = self._chunk_rows(key)
        return (f"{self.path / IMAGES} chunk {self.images.metadata.encode_chunk_key(key)} "
                f"(galaxies {rows.start}-{rows.stop - 1})")

    def _check_chunks_present(self) -> None:
        """Every chunk that holds a rendered galaxy is on disk (Zarr reads a missing chunk as
        NaN, its fill value, and skips writing a chunk that is all NaN)."""
        usable = self.params["status"] == OK
        for key in np.ndindex(*self.images.cdata_shape):
            stored = self.path / IMAGES / self.images.metadata.encode_chunk_key(key)
            if not stored.exists() and usable[self._chunk_rows(key)].any():
                raise DatasetError(f"{self._chunk_name(key)} is missing: the dataset is incomplete")

    def _read(self, selection: Callable[[], np.ndarray], rows: np.ndarray) -> np.ndarray:
        """``selection()`` of the images; a chunk that cannot be decoded is named."""
        try:
            return np.asarray(selection(), np.float32)
        except Exception as err:  # codecs raise RuntimeError, ValueError, ...: all mean "damaged"
            step = self.images.chunks[0]
            for first in np.unique(np.asarray(rows) // step):
                key = (int(first),) + (0,) * (self.images.ndim - 1)
                try:
                    self.images[self._chunk_rows(key)]
                except Exception:
                    raise DatasetError(f"{self._chunk_name(key)} cannot be decoded "
                                       f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
            raise DatasetError(f"{self.path / IMAGES} cannot be read ({type(err).__name__}: "
                               f"{str(err).splitlines()[0]})") from None

    def read_images(self, start: int, stop: int) -> np.ndarray:
        """Images ``start:stop`` as float32 numpy."""
        return self._read(lambda: self.images[start:stop], np.arange(start, min(stop, len(self))))

    def check_finite(self, columns, rows) -> None:
        """Refuse truth ``columns`` that are missing or not finite for the galaxies ``rows``."""
        for name in columns:
            if name not in self.params:
                raise DatasetError(f"{self.path / PARAMS} has no '{name}' column")
            values = np.asarray(self.params[name][rows], float)
            bad = ~np.isfinite(values)
            if bad.any():
                raise DatasetError(f"{self.path / PARAMS}: column '{name}' is not finite for "
                                   f"{bad.sum()} galaxies (first: id {int(np.asarray(rows)[bad][0])})")

    def check_finite_images(self, images: np.ndarray, ids) -> None:
        """Refuse ``images`` (those of galaxies ``ids``) holding NaN or infinity where the
        galaxy rendered (status 'ok'; the others are NaN by design)."""
        ids = np.asarray(ids)
        bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1) & (self.params["status"][ids] == OK)
        if bad.any():
            raise DatasetError(f"{self.path / IMAGES}: the image of galaxy {int(ids[bad][0])} "
                               f"(status 'ok') is not finite ({int(bad.sum())} such images)")

    @cached_property
    def images(self) -> zarr.Array:
        """The N x H x W image array (ADU, sky-subtracted), read lazily."""
        try:
            return zarr.open_array(str(self.path / IMAGES), mode="r")
        except Exception as err:  # zarr raises several types for a damaged store
            raise DatasetError(f"{self.path / IMAGES} cannot be read as a Zarr array: {err}") from None

    @cached_property
    def params(self) -> dict[str, np.ndarray]:
        """The truth table, one numpy array per column."""
        try:
            table = pq.read_table(self.path / PARAMS)
        except (OSError, pa.ArrowException) as err:
            raise DatasetError(f"{self.path / PARAMS} cannot be read ({str(err).splitlines()[0]})") from None
        params = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
        # Datasets written before conditions were drawn per galaxy had them fixed in the config.
        fixed = {"psf_fwhm": self.config.psf.fwhm, "psf_beta": self.config.psf.beta,
                 "sky_level": self.config.noise.sky_level}
        for name, value in fixed.items():
            if name not in params:
                params[name] = np.full(len(params["id"]), float(value))
        return params

    @cached_property
    def config(self) -> SimConfig:
        """The resolved simulation config that produced this dataset."""
        try:
            data = read_yaml(self.path / CONFIG)
            if not isinstance(data, dict):
                raise ConfigError("not a mapping of stage sections")
            return from_dict(SimConfig, data.get("simulate"), "simulate.")
        except ConfigError as err:
            raise DatasetError(f"{self.path / CONFIG}: {err}") from None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def usable(self) -> np.ndarray:
        """Indices of the galaxies that rendered (status ``ok``)."""
        return np.flatnonzero(self.params["status"] == OK)

    def load_images(self, indices=None) -> np.ndarray:
        """Images as float32 numpy, all of them or the given sorted indices."""
        import psutil

        indices = np.arange(len(self)) if indices is None else np.asarray(indices)
        needed = len(indices) * int(np.prod(self.images.shape[1:])) * 4
        available = psutil.virtual_memory().available
        if needed > available:
            raise DatasetError(f"{self.path}: {len(indices)} images need {needed / 2**30:.3g} GiB of "
                               f"memory; {available / 2**30:.3g} GiB is available")
        if len(indices) == len(self):
            return self._read(lambda: self.images[:], indices)
        return self._read(lambda: self.images.get_orthogonal_selection(
            (indices, slice(None), slice(None))), indices)
