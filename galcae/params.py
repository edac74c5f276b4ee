"""The galaxy parameter set: names, units, physical bounds and conversions.

Names follow GalSim so configs, simulations and catalogs map one to one.

Pixel convention (used everywhere in galcae): a stamp of W x H pixels spans
``0 <= x < W`` and ``0 <= y < H``; pixel ``image[j, i]`` (row j, column i) covers
``[i, i+1) x [j, j+1)``, so its centre is at ``(i + 0.5, j + 0.5)`` and the
centre of a 64 x 64 stamp is ``(32, 32)``. This is GalSim's convention shifted
by ``-0.5`` (GalSim puts the centre of its first pixel at 1) and astropy /
numpy's 0-based pixel-centre convention shifted by ``+0.5``.

Ellipticity is the reduced shear ``|g| = (1 - q) / (1 + q)`` with axis ratio
``q = b / a``; ``position_angle`` is the major axis in degrees counter-clockwise
from +x, in ``[0, 180)``; ``g1 = |g| cos 2PA`` and ``g2 = |g| sin 2PA``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Parameter:
    """One physical parameter of a Sérsic galaxy.

    Parameters
    ----------
    name : str
        Name in configs, ``params.parquet`` and catalogs.
    unit : str
        astropy unit string (``""`` for dimensionless).
    bounds : tuple of float
        Physically allowed closed interval; config ranges must lie inside it.
    description : str
        One line for docs, catalogs and FITS headers.
    """

    name: str
    unit: str
    bounds: tuple[float, float]
    description: str


PARAMETERS: dict[str, Parameter] = {
    p.name: p
    for p in (
        Parameter("flux", "adu", (0.0, np.inf), "total integrated flux"),
        Parameter("half_light_radius", "arcsec", (0.0, np.inf), "radius enclosing half the light"),
        # GalSim's Sérsic implementation accepts 0.3 <= n <= 6.2.
        Parameter("sersic_n", "", (0.3, 6.2), "Sérsic index"),
        Parameter("ellipticity", "", (0.0, 0.99), "reduced-shear ellipticity |g| = (1-q)/(1+q)"),
        Parameter("position_angle", "deg", (0.0, 180.0), "major axis, counter-clockwise from +x"),
        Parameter("x", "pix", (-np.inf, np.inf), "centre column, 0 at the stamp's left edge"),
        Parameter("y", "pix", (-np.inf, np.inf), "centre row, 0 at the stamp's bottom edge"),
    )
}

#: Parameters a simulation draws, in table order.
SIMULATED = tuple(PARAMETERS)

#: Parameters derived from the simulated ones (see :func:`shear_from_ellipticity`).
DERIVED = {
    "g1": Parameter("g1", "", (-1.0, 1.0), "reduced shear component along x"),
    "g2": Parameter("g2", "", (-1.0, 1.0), "reduced shear component at 45 deg"),
}


#: Observing conditions of a stamp: drawn per galaxy by a survey simulation, and the inputs
#: besides the image that a conditioned model takes.
CONDITIONS = {
    "psf_fwhm": Parameter("psf_fwhm", "arcsec", (0.05, 10.0), "PSF full width at half maximum"),
    "psf_beta": Parameter("psf_beta", "", (1.1, 20.0), "Moffat beta of the PSF"),
    "sky_level": Parameter("sky_level", "adu", (0.0, 1e7), "sky level per pixel (subtracted)"),
    "noise_sigma": Parameter("noise_sigma", "adu", (0.0, np.inf),
                             "sky-noise sigma measured on the stamp's outer pixels (mad_std)"),
}


#: The parameters of one Sérsic galaxy as the fits, the renderer and the Cramér–Rao bound
#: take them (the shape as the shear ``g1``, ``g2``), in the order of their matrices.
FIT_PARAMETERS = ("flux", "half_light_radius", "sersic_n", "g1", "g2", "x", "y")

#: Per-galaxy outcome of a rendering or a fit; anything else is flagged or counted as failed.
OK = "ok"
#: A fit that stopped at its step limit (kept, as its last step).
MAX_NFEV = "max_nfev"
#: The prefix of a fit that could not be made (``failed: <why>``).
FAILED = "failed"


#: The PSF's conditions (a Gaussian PSF ignores the Moffat beta).
PSF_CONDITIONS = ("psf_fwhm", "psf_beta")
#: The conditions that set how a galaxy is drawn: the PSF and the sky (a simulation's truth).
RENDER_CONDITIONS = (*PSF_CONDITIONS, "sky_level")
#: The conditions a model can take besides the image (the sky enters as the measured noise).
MODEL_CONDITIONS = (*PSF_CONDITIONS, "noise_sigma")
#: What the Sérsic renderer and the physical decoder draw: the galaxy and its PSF.
DRAWN = FIT_PARAMETERS + PSF_CONDITIONS
#: FITS header keywords that state a file's conditions.
FITS_KEYWORDS = {"psf_fwhm": "PSFFWHM", "psf_beta": "PSFBETA"}


def unit_of(name: str) -> str:
    """The astropy unit string of a simulated, derived or condition column."""
    return {**PARAMETERS, **DERIVED, **CONDITIONS}[name].unit


def shear_from_ellipticity(ellipticity, position_angle_deg):
    """``(g1, g2)`` from ``|g|`` and the position angle in degrees."""
    two_theta = np.deg2rad(2.0 * np.asarray(position_angle_deg, dtype=float))
    e = np.asarray(ellipticity, dtype=float)
    return e * np.cos(two_theta), e * np.sin(two_theta)


def ellipticity_from_shear(g1, g2):
    """``(|g|, position_angle_deg)`` from the shear components; PA in ``[0, 180)``."""
    g1 = np.asarray(g1, dtype=float)
    g2 = np.asarray(g2, dtype=float)
    pa = np.rad2deg(0.5 * np.arctan2(g2, g1)) % 180.0
    return np.hypot(g1, g2), pa


def ellipticity_errors(g1, g2, g1_err, g2_err):
    """1-sigma of ``|g|`` and of the position angle (deg) from those of ``g1, g2`` (first
    order, independent components; the angle's error diverges as ``|g| -> 0``)."""
    g1, g2, s1, s2 = (np.asarray(v, float) for v in (g1, g2, g1_err, g2_err))
    e2 = g1**2 + g2**2
    with np.errstate(divide="ignore", invalid="ignore"):
        e_err = np.sqrt((g1 * s1) ** 2 + (g2 * s2) ** 2) / np.sqrt(e2)
        pa_err = np.rad2deg(0.5 * np.sqrt((g2 * s1) ** 2 + (g1 * s2) ** 2) / e2)
    return e_err, pa_err


def axis_ratio_from_ellipticity(ellipticity):
    """Axis ratio ``q = b/a`` from the reduced-shear ellipticity ``|g|``."""
    e = np.asarray(ellipticity, dtype=float)
    return (1.0 - e) / (1.0 + e)
