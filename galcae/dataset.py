"""The on-disk dataset: ``images.zarr`` + ``params.parquet`` + ``config.yaml``.

A dataset directory is written under a temporary name and renamed into place when
complete, so an interrupted run never leaves a half-written dataset behind.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
import zarr

from . import __version__
from .config import ConfigError, SimConfig, from_dict, to_dict
from .params import CONDITIONS, DERIVED, PARAMETERS

IMAGES = "images.zarr"
PARAMS = "params.parquet"
CONFIG = "config.yaml"
FORMAT = "galcae-dataset/1"

#: Columns that describe the rendering rather than the galaxy.
_BOOKKEEPING = {
    "id": ("", "galaxy index in the dataset"),
    "seed": ("", "noise seed of this galaxy"),
    "snr": ("", "matched-filter S/N of the noiseless image"),
    "flux_in_stamp": ("", "fraction of the flux that falls on the stamp"),
    "status": ("", "'ok', or why GalSim could not render the galaxy"),
}


class DatasetError(ValueError):
    """A path that is not a usable galcae dataset."""


def column_meta(name: str) -> tuple[str, str]:
    """``(unit, description)`` of a ``params.parquet`` column."""
    spec = {**PARAMETERS, **DERIVED, **CONDITIONS}.get(name)
    return (spec.unit, spec.description) if spec else _BOOKKEEPING.get(name, ("", ""))


@contextmanager
def atomic_directory(path: Path, overwrite: bool = False):
    """Yield a temporary sibling directory that becomes ``path`` when the block succeeds.

    An existing ``path`` is refused unless ``overwrite``; it is replaced only after the
    new directory is complete, and left untouched if the block fails.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another path or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


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
        return dataset

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
        table = pq.read_table(self.path / PARAMS)
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
        data = yaml.safe_load((self.path / CONFIG).read_text()) or {}
        try:
            return from_dict(SimConfig, data.get("simulate"), "simulate.")
        except ConfigError as err:
            raise DatasetError(f"{self.path / CONFIG}: {err}") from None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def usable(self) -> np.ndarray:
        """Indices of the galaxies that rendered (status ``ok``)."""
        return np.flatnonzero(self.params["status"] == "ok")

    def load_images(self, indices=None) -> np.ndarray:
        """Images as float32 numpy, all of them or the given sorted indices."""
        if indices is None:
            return self.images[:]
        indices = np.asarray(indices)
        return self.images.get_orthogonal_selection((indices, slice(None), slice(None)))
