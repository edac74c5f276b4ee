"""Where stamps come from at inference: FITS cubes, FITS stamps, galcae datasets, FITS fields.

Each input is planned into small, picklable chunks that a worker reads itself, so
stamps never pass through the driver and memory stays flat whatever the input size.

Rules (also in the README):

- a directory holding ``params.parquet`` is a galcae dataset; any other directory, or
  a glob, stands for the FITS files it holds (``*.fits``, ``*.fit``, ``*.fits.gz``);
- in a FITS file the image HDU is the one named by ``hdu``, else the first HDU with a
  2-D or 3-D image; a 3-D image is an N x H x W cube of stamps; a 2-D image no larger
  than the model's stamp is one stamp; a larger 2-D image is a field, searched for
  sources with ``sep`` (SExtractor's algorithms), with optional ``MASK`` (non-zero =
  bad) and ``VARIANCE``/``WEIGHT`` HDUs.

Pixel coordinates in catalogs follow galcae's convention (``params.py``): a pixel's
centre lies at ``i + 0.5``.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import InputError
from ..params import FITS_KEYWORDS

log = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
MASK_NAMES = ("MASK", "BADPIX", "FLAGS")
VARIANCE_NAMES = ("VARIANCE", "VAR")
WEIGHT_NAMES = ("WEIGHT", "WHT", "IVAR", "INVVAR")
PSF_NAME = "PSF"
#: HDUs that describe the image (its PSF, mask, variance, weight) and are never measured as one.
AUXILIARY_NAMES = (PSF_NAME, *MASK_NAMES, *VARIANCE_NAMES, *WEIGHT_NAMES)
#: Source detection in fields (``_plan_field``): the image is convolved with a circular
#: Gaussian of this FWHM in pixels (0.6" at 0.2"/pixel, at or below a ground-based PSF's:
#: near the matched filter of a compact source, and close pairs stay apart; sep's default
#: 3x3 kernel is much narrower), on 11 x 11 pixels (±1.7 FWHM).
DETECT_KERNEL_FWHM = 3.0
DETECT_KERNEL = np.exp(-4 * np.log(2) * np.add.outer(np.arange(-5, 6) ** 2, np.arange(-5, 6) ** 2)
                       / DETECT_KERNEL_FWHM**2)
#: The noise sigma of the convolved image over the pixels' (white noise): sep normalises the
#: kernel to unit sum and thresholds the convolved image at ``thresh`` times the pixels'
#: sigma, so ``--detect-threshold`` is multiplied by this to be in sigma of the image
#: searched (with sep's default 3x3 kernel, 3 sigma of the pixels was 8 of its convolved image).
DETECT_KERNEL_NOISE = float(np.sqrt((DETECT_KERNEL**2).sum()) / DETECT_KERNEL.sum())
#: Fewest connected pixels above the threshold: at the default 3 sigma, 5 lets noise peaks of
#: ~4 sigma through (2 per arcmin²); 10 keeps them to ~0.8 per arcmin² and still finds half the
#: point sources of S/N 5 and 98 % of S/N 7 in 0.5" seeing (``benchmarks/realistic_field.py``).
DETECT_MIN_AREA = 10
#: sep's deblending contrast: its default 0.005 merges more faint galaxies with a brighter
#: neighbour in a deep field (87 % of those of S/N 10-20 found, 91 % at 3e-4); lower splits
#: the smooth simulated galaxies no more (real clumpy ones are not simulated).
DETECT_DEBLEND_CONT = 3e-4


@dataclass
class Stamps:
    """What a chunk reads: ADU stamps of the model's size, per-row columns and flags."""

    images: np.ndarray  # (n, size, size) float32, sky-subtracted ADU; NaN where no data
    columns: dict[str, np.ndarray]  # source, index, and for fields x_field, y_field, ra, dec
    truncated: np.ndarray  # (n,) bool: the stamp runs over the edge of its image
    adapted: np.ndarray  # (n,) bool: cropped or zero-padded to the model's stamp size
    # Observing conditions the input states (psf_fwhm, psf_beta): scalars or per-stamp arrays.
    conditions: dict = field(default_factory=dict)
    psf: np.ndarray | None = None  # PSF images, (p, p) for all or (n, p, p), unit sum


def header_conditions(header: fits.Header, where: str) -> dict:
    """``psf_fwhm`` (arcsec) and ``psf_beta`` from the PSFFWHM / PSFBETA keywords, where present.
    A value that is not a number is refused; a number outside the physical range is kept
    (the row is flagged, see :func:`galcae.catalog.infer.chunk_conditions`)."""
    out = {}
    for name, key in FITS_KEYWORDS.items():
        if key in header:
            value = header[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{where}: keyword {key} = {value!r} is not a number")
            out[name] = float(value)
    return out


def fit_to_size(images: np.ndarray, size: int, adapt: bool, where: str) -> tuple[np.ndarray, bool]:
    """Stamps ``(..., H, W)`` as ``(..., size, size)``: unchanged, or centre-cropped / zero-padded
    when ``adapt`` (the pixel scale is kept; padding is sky-subtracted background)."""
    shape = images.shape[-2:]
    if shape == (size, size):
        return images, False
    if not adapt:
        raise InputError(f"{where}: stamps are {shape[0]}x{shape[1]} pixels but the model takes "
                         f"{size}x{size}; pass --adapt-size to centre-crop / zero-pad them")
    log.warning("%s: %dx%d stamps centre-cropped / zero-padded to %dx%d (flag_adapted)", where,
                shape[0], shape[1], size, size)
    out = np.zeros(images.shape[:-2] + (size, size), np.float32)
    src, dst = [], []
    for n in shape:
        lo = max(0, (n - size) // 2)  # crop offset in the input
        pad = max(0, (size - n) // 2)  # pad offset in the output
        m = min(n, size)
        src.append(slice(lo, lo + m))
        dst.append(slice(pad, pad + m))
    out[(..., *dst)] = images[(..., *src)]
    return out, True


# --- reading a FITS file --------------------------------------------------------------------


def open_fits(path: str | Path) -> fits.HDUList:
    """Open lazily; a one-line error for non-FITS or corrupt files.

    Not memory-mapped: a cube's ``section`` reads just the stamps asked for either way, and a
    map's pages would stay in the process's resident memory as a catalog goes (250 MB more
    after a 20,000-stamp cube), where plain reads keep it flat in the number of stamps.
    Integer images stay unscaled here: read pixels through :func:`read_pixels`, which applies
    BSCALE / BZERO / BLANK."""
    try:
        hdul = fits.open(path, memmap=False, lazy_load_hdus=False, do_not_scale_image_data=True)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, ValueError, TypeError) as err:
        raise InputError(f"{path}: not a readable FITS file ({str(err).splitlines()[0]})") from None
    return hdul


def image_hdu(hdul: fits.HDUList, path, hdu: str | int | None = None) -> tuple[int, fits.ImageHDU]:
    """``(index, HDU)`` of the image to measure: ``hdu`` when given, else the first 2-D/3-D image."""
    if hdu is not None:
        try:
            chosen = hdul[int(hdu) if str(hdu).isdigit() else hdu]
        except (KeyError, IndexError):
            names = ", ".join(h.name or str(i) for i, h in enumerate(hdul))
            raise InputError(f"{path}: no HDU {hdu!r} (has {names})") from None
        index = hdul.index_of(chosen)
        if not chosen.is_image or chosen.header.get("NAXIS", 0) not in (2, 3):
            raise InputError(f"{path}[{hdu}]: not a 2-D image or 3-D cube of stamps")
        return index, chosen
    for index, h in enumerate(hdul):
        if h.is_image and h.header.get("NAXIS", 0) in (2, 3) and h.name.upper() not in AUXILIARY_NAMES:
            return index, h
    raise InputError(f"{path}: no 2-D image or 3-D cube in any HDU")


def _named_hdu(hdul: fits.HDUList, names) -> fits.ImageHDU | None:
    for h in hdul:
        if h.name.upper() in names and h.is_image:
            return h
    return None


def celestial_wcs(header: fits.Header, where: str):
    """The header's celestial WCS, or None (astropy's notes on fixed cards silenced); a WCS
    that wcslib cannot use is refused with its first line."""
    import warnings

    if "CTYPE1" not in header and "CTYPE2" not in header:  # no celestial axes (nor astropy.wcs's import)
        return None
    from astropy.wcs import WCS, FITSFixedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2)
            wcs = wcs.celestial if wcs.has_celestial else None
            if wcs is not None:  # a singular matrix or a bad projection shows only when used
                wcs.pixel_to_world_values(0.0, 0.0)
    except Exception as err:  # wcslib raises many types (SingularMatrixError, InvalidTransformError...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{where}: the WCS in the header is invalid ({first})") from None
    return wcs


def check_pixel_scale(header: fits.Header, where: str, pixel_scale: float) -> None:
    """Refuse an image whose celestial WCS pixel scale differs from the model's by > 2 %."""
    wcs = celestial_wcs(header, where)
    if wcs is None:
        return
    from astropy.wcs.utils import proj_plane_pixel_scales

    scale = float(np.mean(proj_plane_pixel_scales(wcs)) * 3600.0)
    if abs(scale / pixel_scale - 1.0) > 0.02:
        raise InputError(f"{where}: pixel scale {scale:.4g} arcsec differs from the model's "
                         f"{pixel_scale:.4g} arcsec; its radii would be wrong")


def read_pixels(h, where: str, rows: slice | None = None) -> np.ndarray:
    """float32 pixels, in native byte order, of an HDU opened by :func:`open_fits` (all of it,
    or ``rows`` of a cube): integer data scaled by BSCALE / BZERO, BLANK pixels NaN."""
    try:
        raw = h.section[rows] if rows is not None else h.data
        if raw is None:
            raise ValueError("no data")
        raw = np.asarray(raw)
    except (OSError, ValueError, TypeError) as err:
        span = f" stamps {rows.start}-{rows.stop}" if rows is not None else ""
        raise InputError(f"{where}: cannot read{span} ({str(err).splitlines()[0]})") from None
    scale, zero = h.header.get("BSCALE", 1.0), h.header.get("BZERO", 0.0)
    for key, value in (("BSCALE", scale), ("BZERO", zero)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: keyword {key} = {value!r} is not a number")
    if raw.dtype.kind in "iu":
        blank = h.header.get("BLANK")
        pixels = raw.astype(np.float64) * scale + zero
        if blank is not None:
            pixels[raw == blank] = np.nan
        return pixels.astype(np.float32)
    pixels = np.asarray(raw, dtype=np.float32)
    return pixels * np.float32(scale) + np.float32(zero) if (scale, zero) != (1.0, 0.0) else pixels


# --- chunks: what a worker reads -------------------------------------------------------------


@dataclass(frozen=True)
class CubeChunk:
    """Stamps ``start:stop`` of an N x H x W cube."""

    path: str
    source: str
    hdu: int
    start: int
    stop: int

    def row_keys(self) -> tuple[list[str], np.ndarray]:
        """``(source, index)`` of each row, as the catalog will say."""
        return [self.source] * (self.stop - self.start), np.arange(self.start, self.stop)

    def read(self, size: int, adapt: bool) -> Stamps:
        where = f"{self.source}[{self.hdu}]"
        with open_fits(self.path) as hdul:
            h = hdul[self.hdu]
            images = read_pixels(h, where, slice(self.start, self.stop))
            conditions = header_conditions(h.header, where)
            mask_hdu = _named_hdu(hdul, MASK_NAMES)
            if mask_hdu is not None:  # its shape was checked when the run was planned
                rows = slice(self.start, self.stop) if mask_hdu.header.get("NAXIS") == 3 else None
                images[np.broadcast_to(read_pixels(mask_hdu, self.source, rows) != 0, images.shape)] = np.nan
        n = len(images)
        images, adapted = fit_to_size(images, size, adapt, f"{self.source}[{self.hdu}]")
        return Stamps(images, {"source": np.full(n, self.source, dtype=object),
                               "index": np.arange(self.start, self.start + n)},
                      np.zeros(n, bool), np.full(n, adapted), conditions)


@dataclass(frozen=True)
class StampFilesChunk:
    """One stamp from each of several 2-D FITS files."""

    paths: tuple[str, ...]
    sources: tuple[str, ...]
    hdus: tuple[int, ...]

    def row_keys(self) -> tuple[list[str], np.ndarray]:
        return list(self.sources), np.zeros(len(self.sources), np.int64)

    def read(self, size: int, adapt: bool) -> Stamps:
        n = len(self.paths)
        images = np.empty((n, size, size), np.float32)
        adapted = np.zeros(n, bool)
        conditions = {name: np.full(n, np.nan) for name in FITS_KEYWORDS}
        for i, (path, source, hdu) in enumerate(zip(self.paths, self.sources, self.hdus)):
            where = f"{source}[{hdu}]"
            with open_fits(path) as hdul:
                images[i], adapted[i] = fit_to_size(read_pixels(hdul[hdu], where), size, adapt, where)
                for name, value in header_conditions(hdul[hdu].header, where).items():
                    conditions[name][i] = value
        return Stamps(images, {"source": np.array(self.sources, dtype=object),
                               "index": np.zeros(n, np.int64)}, np.zeros(n, bool), adapted,
                      {k: v for k, v in conditions.items() if np.isfinite(v).any()})


@dataclass(frozen=True)
class DatasetChunk:
    """Galaxies ``start:stop`` of a dataset written by ``galcae simulate``."""

    path: str
    source: str
    start: int
    stop: int

    def row_keys(self) -> tuple[list[str], np.ndarray]:
        return [self.source] * (self.stop - self.start), np.arange(self.start, self.stop)

    def read(self, size: int, adapt: bool) -> Stamps:
        from ..dataset import Dataset

        dataset = Dataset.open(self.path)
        images = dataset.read_images(self.start, self.stop)
        n = len(images)
        images, adapted = fit_to_size(images, size, adapt, self.source)
        conditions = {name: dataset.params[name][self.start:self.stop]
                      for name in (*FITS_KEYWORDS, "sky_level")}
        return Stamps(images, {"source": np.full(n, self.source, dtype=object),
                               "index": np.arange(self.start, self.stop)}, np.zeros(n, bool),
                      np.full(n, adapted), conditions)


@dataclass(frozen=True, eq=False)
class FieldChunk:
    """Stamps cut around detections in a background-subtracted field saved as ``.npy``."""

    array: str  # .npy of the background-subtracted field, NaN where masked
    source: str
    detections: dict  # index, x, y (numpy 0-based), ra, dec: arrays
    conditions: dict = field(default_factory=dict)  # from the field's header

    def __eq__(self, other) -> bool:
        if not isinstance(other, FieldChunk):
            return NotImplemented
        return ((self.array, self.source) == (other.array, other.source)
                and same_arrays(self.detections, other.detections) and same_arrays(self.conditions, other.conditions))

    def __hash__(self) -> int:
        return hash((self.array, self.source))

    def row_keys(self) -> tuple[list[str], np.ndarray]:
        index = np.asarray(self.detections["index"], np.int64)
        return [self.source] * len(index), index

    def read(self, size: int, adapt: bool) -> Stamps:
        from astropy.nddata import Cutout2D, NoOverlapError

        data = np.load(self.array, mmap_mode="r")
        d = self.detections
        n = len(d["index"])
        images = np.full((n, size, size), np.nan, np.float32)
        truncated = np.zeros(n, bool)
        for i in range(n):
            try:
                cut = Cutout2D(data, (d["x"][i], d["y"][i]), size, mode="partial",
                               fill_value=np.nan, copy=True)
            except NoOverlapError:
                truncated[i] = True
                continue
            images[i] = cut.data
            overlap = tuple(sl.stop - sl.start for sl in cut.slices_original)
            truncated[i] = overlap != (size, size)
        columns = {"source": np.full(n, self.source, dtype=object), "index": np.asarray(d["index"]),
                   "x_field": np.asarray(d["x"]) + 0.5, "y_field": np.asarray(d["y"]) + 0.5,
                   "ra": np.asarray(d["ra"]), "dec": np.asarray(d["dec"]),
                   "neighbour_index": np.asarray(d.get("neighbour", np.full(n, -1)), np.int64)}
        return Stamps(images, columns, truncated, np.zeros(n, bool), dict(self.conditions))


# --- planning --------------------------------------------------------------------------------


def same_arrays(a: dict, b: dict) -> bool:
    """Whether two dicts of arrays are equal (a dataclass's ``==`` would ask an array for a truth value)."""
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


class WrappedChunk:
    """A chunk that adds to what another chunk (its ``chunk`` field) reads: its rows are that chunk's."""

    def row_keys(self):
        return self.chunk.row_keys()

    def __hash__(self) -> int:
        return hash(self.chunk)


def expand_inputs(inputs) -> list[Path]:
    """Files and dataset directories from paths, directories and globs, in a stable order."""
    out = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            if (path / "params.parquet").exists():
                out.append(path)
            else:
                found = sorted(p for p in path.iterdir() if p.name.lower().endswith(FITS_SUFFIXES))
                if not found:
                    raise InputError(f"{path}: directory holds no FITS files and is not a galcae dataset")
                out.extend(found)
        elif path.exists():
            out.append(path)
        else:
            matches = sorted(glob.glob(str(item)))
            if not matches:
                raise InputError(f"{item}: no such file, directory or matching files")
            out.extend(Path(m) for m in matches)
    return out


@dataclass
class Plan:
    """The chunks of all inputs, in catalog order, and what the catalog will hold."""

    chunks: list = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # rows of each chunk
    has_field: bool = False
    warnings: list[str] = field(default_factory=list)

    def add(self, chunk, n: int) -> None:
        self.chunks.append(chunk)
        self.rows.append(n)


def plan_inputs(inputs, *, stamp_size: int, pixel_scale: float, chunk_size: int, work_dir: Path,
                hdu=None, detect_threshold: float = 3.0) -> Plan:
    """Turn user inputs into chunks of at most ``chunk_size`` stamps."""
    plan = Plan()
    stamp_batch: list[tuple[str, str, int]] = []

    def flush_stamps():
        for i in range(0, len(stamp_batch), chunk_size):
            part = stamp_batch[i:i + chunk_size]
            plan.add(StampFilesChunk(*map(tuple, zip(*part))), len(part))
        stamp_batch.clear()

    for path in expand_inputs(inputs):
        source = str(path)
        if path.is_dir():
            flush_stamps()
            from ..dataset import Dataset

            n = len(Dataset.open(path))
            for start in range(0, n, chunk_size):
                plan.add(DatasetChunk(str(path.resolve()), source, start, min(n, start + chunk_size)),
                         min(n, start + chunk_size) - start)
            continue
        with open_fits(path) as hdul:
            index, h = image_hdu(hdul, path, hdu)
            where = f"{path}[{h.name or index}]"
            check_pixel_scale(h.header, where, pixel_scale)
            shape = tuple(h.shape)
            if 0 in shape:
                plan.warnings.append(f"{where}: empty image (shape {' x '.join(map(str, shape))})")
                continue
            if len(shape) == 3:
                flush_stamps()
                _check_mask(hdul, path, shape)
                for start in range(0, shape[0], chunk_size):
                    stop = min(shape[0], start + chunk_size)
                    plan.add(CubeChunk(str(path.resolve()), source, index, start, stop), stop - start)
            elif max(shape) <= stamp_size:
                stamp_batch.append((str(path.resolve()), source, index))
            else:
                flush_stamps()
                plan.has_field = True
                _plan_field(plan, hdul, h, path, where, chunk_size, work_dir, len(plan.chunks),
                            detect_threshold, stamp_size)
    flush_stamps()
    return plan


def _check_mask(hdul, path, shape: tuple) -> None:
    """A cube's ``MASK`` HDU (non-zero = bad) must have its shape, or one stamp's for all."""
    mask_hdu = _named_hdu(hdul, MASK_NAMES)
    if mask_hdu is not None and tuple(mask_hdu.shape) not in (shape, shape[1:]):
        raise InputError(f"{path}[{mask_hdu.name}]: mask shape {tuple(mask_hdu.shape)} is neither the cube's "
                         f"{shape} nor one stamp's {shape[1:]}")


def _plan_field(plan: Plan, hdul, h, path, where: str, chunk_size: int, work_dir: Path,
                number: int, threshold: float, stamp_size: int) -> None:
    """Subtract the background, detect sources, save the field for the workers, add its chunks."""
    import sep

    data = read_pixels(h, where).copy()
    bad = ~np.isfinite(data)
    mask_hdu = _named_hdu(hdul, MASK_NAMES)
    if mask_hdu is not None:
        if mask_hdu.shape != data.shape:
            raise InputError(f"{path}[{mask_hdu.name}]: mask shape {mask_hdu.shape} != image {data.shape}")
        bad |= np.asarray(mask_hdu.data) != 0
    err = None
    var_hdu = _named_hdu(hdul, VARIANCE_NAMES)
    weight_hdu = _named_hdu(hdul, WEIGHT_NAMES)
    if var_hdu is not None or weight_hdu is not None:
        aux = var_hdu if var_hdu is not None else weight_hdu
        if aux.shape != data.shape:
            raise InputError(f"{path}[{aux.name}]: shape {aux.shape} != image {data.shape}")
        values = read_pixels(aux, f"{path}[{aux.name}]")
        with np.errstate(divide="ignore", invalid="ignore"):
            variance = values if var_hdu is not None else 1.0 / values
        bad |= ~(np.isfinite(variance) & (variance > 0))
        err = np.sqrt(np.where(bad, 0.0, variance)).astype(np.float32)
    data[bad] = 0.0
    background = sep.Background(data, mask=bad)
    data -= background.back()
    try:  # filter_type "conv": sep's "matched" thresholds its S/N image but deblends and cleans
        # against thresholds in units of the convolved image, which loses most faint sources
        objects = sep.extract(data, threshold * DETECT_KERNEL_NOISE,
                              err=err if err is not None else background.globalrms, mask=bad,
                              minarea=DETECT_MIN_AREA, filter_kernel=DETECT_KERNEL, filter_type="conv",
                              deblend_cont=DETECT_DEBLEND_CONT)
    except Exception as err_:  # sep raises bare Exception for internal limits
        raise InputError(f"{where}: source detection failed ({err_})") from None
    if len(objects) == 0:
        plan.warnings.append(f"{where}: no sources detected above {threshold} sigma")
        return
    data[bad] = np.nan
    array = Path(work_dir) / f"field-{number:05d}.npy"
    array.parent.mkdir(parents=True, exist_ok=True)
    np.save(array, data)
    x, y = np.asarray(objects["x"], float), np.asarray(objects["y"], float)
    wcs = celestial_wcs(h.header, where)
    if wcs is not None:
        sky = wcs.pixel_to_world(x, y)
        ra, dec = sky.icrs.ra.deg, sky.icrs.dec.deg
    else:
        ra = dec = np.full(len(x), np.nan)
    neighbour = nearest_inside(x, y, stamp_size / 2)
    for start in range(0, len(x), chunk_size):
        sl = slice(start, start + chunk_size)
        detections = {"index": np.arange(len(x))[sl], "x": x[sl], "y": y[sl], "ra": ra[sl],
                      "dec": dec[sl], "neighbour": neighbour[sl]}
        plan.add(FieldChunk(str(array.resolve()), str(path), detections, header_conditions(h.header, where)),
                 len(detections["x"]))
    log.info("%s: %d sources detected", where, len(x))


def nearest_inside(x: np.ndarray, y: np.ndarray, half: float) -> np.ndarray:
    """For each detection, the index of the nearest other one whose centre lies inside its
    cutout (``|dx|, |dy| < half`` pixels), or -1."""
    from scipy.spatial import cKDTree

    out = np.full(len(x), -1, np.int64)
    if len(x) < 2:
        return out
    points = np.stack([x, y], axis=1)
    distance, index = cKDTree(points).query(points, k=2)
    other = index[:, 1]
    inside = np.all(np.abs(points[other] - points) < half, axis=1)
    out[inside] = other[inside]
    return out
