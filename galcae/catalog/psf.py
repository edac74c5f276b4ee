"""``--psf FILE``: the PSF of the stamps as an image.

A PSF image is sampled at the stamps' pixel scale, includes the pixel's response (as a star
in the image would), is centred on its central pixel and has an odd size no larger than a
stamp. The file holds one 2-D image (the PSF of every stamp) or an ``N x p x p`` cube (one
per stamp, in the inputs' order), in its first image HDU or the HDU named ``PSF``. galcae
normalises each image to unit sum, and refuses, in one line naming the file and HDU, what
cannot be a PSF: non-finite pixels, a total that is not positive, an even or larger-than-
stamp size, or a centroid more than a pixel off centre.

For a model conditioned on the seeing, each stamp's ``psf_fwhm`` and ``psf_beta`` are
measured from its PSF image by :func:`galcae.physics.moffat_parameters` (the Moffat profile
that best fits the image, drawn as the simulations draw theirs): exact for a Moffat PSF,
the closest Moffat for another. Precedence, per condition: an option > a ``--conditions``
table > the PSF image > the input's keywords or truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..physics import moffat_parameters
from .sources import PSF_NAME, CubeChunk, FieldChunk, StampFilesChunk, WrappedChunk


def read_psf(path, stamp_size: int, pixel_scale: float) -> tuple[np.ndarray, int]:
    """The PSF images of ``path`` as ``(p, p)`` or ``(N, p, p)`` float64, each of unit sum,
    and the index of their HDU."""
    from astropy.io import fits

    from .sources import image_hdu, open_fits, read_pixels

    path = Path(path)
    with open_fits(path) as hdul:
        names = [h.name for h in hdul]
        index, h = image_hdu(hdul, path, "PSF" if "PSF" in names else None)
        where = f"{path}[{h.name or index}]"
        if not isinstance(h, (fits.PrimaryHDU, fits.ImageHDU)) or h.data is None or h.data.ndim not in (2, 3):
            raise InputError(f"{where}: a PSF is a 2-D image or an N x p x p cube")
        check_psf_scale(h.header, where, pixel_scale)
        psf = np.asarray(read_pixels(h, where), np.float64)
    return checked_psf(psf, where, stamp_size), index


#: Keywords that state a PSF image's pixel scale in arcsec (a celestial WCS also does).
SCALE_KEYWORDS = ("PIXSCALE", "PIXSCAL1", "SECPIX", "PSFSCALE")


def check_psf_scale(header, where: str, pixel_scale: float) -> None:
    """Refuse a PSF image whose header states another pixel scale than the stamps' (its
    celestial WCS, a :data:`SCALE_KEYWORDS` keyword in arcsec, or PSFEx's ``PSF_SAMP`` in
    image pixels), by more than 2 %: galcae takes PSF images at the stamps' pixel scale."""
    from .sources import check_pixel_scale

    check_pixel_scale(header, where, pixel_scale)
    stated = [(key, header[key]) for key in SCALE_KEYWORDS if key in header]
    if "PSF_SAMP" in header:
        stated.append(("PSF_SAMP", header["PSF_SAMP"] * pixel_scale if _is_number(header["PSF_SAMP"])
                       else header["PSF_SAMP"]))
    for key, scale in stated:
        if not _is_number(scale) or scale <= 0:
            raise InputError(f"{where}: keyword {key} = {scale!r} is not a pixel scale")
        if abs(scale / pixel_scale - 1.0) > 0.02:
            finer = pixel_scale / scale
            how = (f"oversampled {finer:.0f} times; " if finer > 1.5 and abs(finer - round(finer)) < 0.02 else "")
            raise InputError(f"{where}: PSF pixel scale {scale:.4g} arcsec ({key}) is not the stamps' "
                             f"{pixel_scale:.4g} arcsec ({how}resample it to the stamps' pixels)")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def checked_psf(psf: np.ndarray, where: str, stamp_size: int) -> np.ndarray:
    """``psf`` normalised to unit sum per image, or an :class:`InputError` saying why it is no PSF."""
    planes = psf[None] if psf.ndim == 2 else psf
    n, ny, nx = planes.shape
    if ny != nx or ny % 2 == 0:
        raise InputError(f"{where}: a PSF image is square with an odd size (the centre is a pixel); "
                         f"this one is {ny} x {nx}")
    if ny > stamp_size:
        raise InputError(f"{where}: the PSF image ({ny} x {nx}) is larger than a stamp ({stamp_size} x {stamp_size})")
    bad = ~np.isfinite(planes).reshape(n, -1).all(axis=1)
    if bad.any():
        raise InputError(f"{where}: PSF {int(np.argmax(bad))} has non-finite pixels")
    total = planes.sum(axis=(1, 2))
    if not (total > 0).all():
        raise InputError(f"{where}: PSF {int(np.argmin(total > 0))} has a total of "
                         f"{float(total[np.argmin(total > 0)]):g}, not a positive flux")
    planes = planes / total[:, None, None]
    offset = _centroid_offset(planes)
    if (offset > 1.0).any():
        worst = int(np.argmax(offset))
        raise InputError(f"{where}: PSF {worst} is centred {offset[worst]:.2f} pixels from its central "
                         "pixel (more than 1); recentre it")
    return planes[0] if psf.ndim == 2 else planes


def _centroid_offset(planes: np.ndarray) -> np.ndarray:
    """Distance in pixels of each image's centroid (of its positive light) from the central pixel."""
    light = np.clip(planes, 0.0, None)
    size = planes.shape[-1]
    grid = np.arange(size) - size // 2
    total = light.sum(axis=(1, 2))
    x = (light.sum(axis=1) * grid).sum(axis=1) / total
    y = (light.sum(axis=2) * grid).sum(axis=1) / total
    return np.hypot(x, y)


@dataclass(frozen=True)
class PsfPlanes:
    """Planes ``[start, stop)`` of a PSF cube in a file, checked when the run was planned and
    read when their chunk is measured: a cube of PSFs (hundreds of MB for a large cube of
    cutouts) stays out of the task graph."""

    path: str
    hdu: str | int
    start: int
    stop: int
    stamp_size: int

    def load(self) -> np.ndarray:
        from .sources import open_fits, read_pixels

        where = f"{self.path}[{self.hdu}]"
        with open_fits(self.path) as hdul:
            planes = read_pixels(hdul[self.hdu], where, slice(self.start, self.stop))
        return checked_psf(np.asarray(planes, np.float64), where, self.stamp_size)


@dataclass(frozen=True, eq=False)
class WithPSF(WrappedChunk):
    """A chunk whose stamps have PSF images: one for all, or one per row of the chunk."""

    chunk: object
    psf: np.ndarray | PsfPlanes  # (p, p) or (n, p, p), unit sum; or where to read the n planes
    pixel_scale: float

    def read(self, size: int, adapt: bool):
        stamps = self.chunk.read(size, adapt)
        psf = self.psf.load() if isinstance(self.psf, PsfPlanes) else self.psf
        n = len(stamps.images)
        fwhm, beta = (np.broadcast_to(v, (n,)).copy() for v in psf_conditions(psf, self.pixel_scale))
        stamps.conditions = {**stamps.conditions, "psf_fwhm": fwhm, "psf_beta": beta}
        stamps.psf = psf
        return stamps

    def __eq__(self, other) -> bool:
        if not isinstance(other, WithPSF):
            return NotImplemented
        same_psf = (self.psf == other.psf if isinstance(self.psf, PsfPlanes) or isinstance(other.psf, PsfPlanes)
                    else np.array_equal(self.psf, other.psf))
        return self.chunk == other.chunk and self.pixel_scale == other.pixel_scale and same_psf

    __hash__ = WrappedChunk.__hash__


def psf_conditions(psf: np.ndarray, pixel_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``psf_fwhm`` (arcsec) and ``psf_beta`` of each PSF image (scalars for one image)."""
    if psf.ndim == 2:
        return moffat_parameters(psf, pixel_scale)
    fitted = {}
    out = np.empty((len(psf), 2))
    for i, plane in enumerate(psf):  # cubes often repeat a PSF: fit each distinct one once
        key = plane.tobytes()
        if key not in fitted:
            fitted[key] = moffat_parameters(plane, pixel_scale)
        out[i] = fitted[key]
    return out[:, 0], out[:, 1]


def with_file_psfs(plan, stamp_size: int, pixel_scale: float) -> None:
    """Give the chunks of files that hold a ``PSF`` HDU their PSF images (in place): a cube's
    2-D PSF serves all its stamps and a 3-D one has a plane per stamp; a stamp file's or a
    field's PSF is 2-D. A directory of stamp files has a PSF HDU in every file or in none."""
    found = {}

    def psf_of(path, image_hdu_index=None):
        if path not in found:
            found[path] = _file_psf(path, stamp_size, pixel_scale, image_hdu_index)
        return found[path]

    for i, chunk in enumerate(plan.chunks):
        if isinstance(chunk, CubeChunk):
            psf = psf_of(chunk.path, chunk.hdu)
            if psf is not None and psf.ndim == 3:
                psf = PsfPlanes(str(chunk.path), PSF_NAME, chunk.start, chunk.stop, stamp_size)
        elif isinstance(chunk, StampFilesChunk):
            psfs = [psf_of(path) for path in chunk.paths]
            psf = None if all(p is None for p in psfs) else _stamp_psfs(psfs, chunk.sources)
        elif isinstance(chunk, FieldChunk):
            psf = psf_of(chunk.source)
            if psf is not None and psf.ndim == 3:
                raise InputError(f"{chunk.source}[PSF]: a field's PSF is one 2-D image")
        else:
            psf = None
        if psf is not None:
            plan.chunks[i] = WithPSF(chunk, psf, pixel_scale)


def _file_psf(path, stamp_size: int, pixel_scale: float, image_hdu_index: int | None) -> np.ndarray | None:
    """The checked images of ``path``'s ``PSF`` HDU (None without one); a cube of PSFs must
    have a plane per stamp of the file's cube."""
    from .sources import open_fits, read_pixels

    with open_fits(path) as hdul:
        if PSF_NAME not in [h.name.upper() for h in hdul]:
            return None
        h = hdul[PSF_NAME]
        where = f"{path}[{PSF_NAME}]"
        if not h.is_image or h.header.get("NAXIS", 0) not in (2, 3):
            raise InputError(f"{where}: a PSF is a 2-D image or an N x p x p cube")
        check_psf_scale(h.header, where, pixel_scale)
        psf = checked_psf(np.asarray(read_pixels(h, where), np.float64), where, stamp_size)
        if psf.ndim == 3:
            n = hdul[image_hdu_index].shape[0] if image_hdu_index is not None and \
                len(hdul[image_hdu_index].shape) == 3 else 1
            if len(psf) != n:
                raise InputError(f"{where}: {len(psf)} PSF images for the file's {n} stamps")
    return psf


def _stamp_psfs(psfs: list, sources) -> np.ndarray:
    """One ``(n, p, p)`` stack of the stamp files' PSFs, zero-padded to the largest."""
    missing = [s for s, p in zip(sources, psfs) if p is None]
    if missing:
        raise InputError(f"{missing[0]}: no PSF HDU, where other stamp files have one; "
                         "give every stamp file a PSF HDU, or none")
    size = max(p.shape[-1] for p in psfs)
    return np.stack([np.pad(p, (size - p.shape[-1]) // 2) for p in psfs])


def with_psf(plan, psf: np.ndarray, pixel_scale: float, where, hdu: int, stamp_size: int) -> None:
    """Give each chunk of ``plan`` its PSF images (in place: the plan is this run's): ``psf``,
    the checked images of the file ``where`` (its HDU ``hdu``); a chunk of a cube of PSFs
    reads its own planes."""
    total = int(sum(plan.rows))
    if psf.ndim == 3 and len(psf) != total:
        raise InputError(f"{where}: {len(psf)} PSF images for {total} stamps (one 2-D PSF for all, "
                         "or one per stamp in input order)")
    first = 0
    for i, (chunk, n) in enumerate(zip(plan.chunks, plan.rows)):
        plan.chunks[i] = WithPSF(chunk, psf if psf.ndim == 2 else
                                 PsfPlanes(str(where), hdu, first, first + n, stamp_size), pixel_scale)
        first += n
