"""The physics, once: a galaxy as GalSim draws it, its PSF, the noise model and its inverse, S/N.

Everything that simulates, bounds, fits or refines a galaxy uses these functions, so the
training set, the Cramér–Rao bound, the classical fit and the refinement share one model.
:mod:`galcae.render` is their differentiable PyTorch twin, tested against them.

- **Galaxy**: a sheared Sérsic profile (``flux`` ADU, ``half_light_radius`` arcsec,
  ``sersic_n``, ``ellipticity`` |g|, ``position_angle`` deg; or ``g1``, ``g2``) centred at
  ``x``, ``y`` in galcae's pixel convention (:mod:`galcae.params`), convolved with the PSF
  and the pixel.
- **PSF**: a Moffat of FWHM (arcsec) and β, or a Gaussian of FWHM (no β).
- **Noise**: CCD noise of a sky-subtracted image in ADU: Poisson on source + sky (in
  electrons, ``gain`` e-/ADU) and Gaussian read noise (e-), so a pixel of mean ``mu`` has
  variance ``(max(mu, 0) + sky) / gain + (read_noise / gain)²``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .params import ellipticity_from_shear

if TYPE_CHECKING:  # GalSim is imported where it draws: 0.4 s a process that only encodes need not pay
    import galsim

#: PSF profiles galcae knows; a Gaussian has no β.
PSF_PROFILES = ("gaussian", "moffat")


def psf_profile(profile: str, fwhm: float, beta: float | None = None) -> galsim.GSObject:
    """The PSF: ``galsim.Moffat(beta, fwhm)`` or ``galsim.Gaussian(fwhm)`` (FWHM in arcsec)."""
    import galsim
    if profile == "moffat":
        return galsim.Moffat(beta=beta, fwhm=fwhm)
    if profile == "gaussian":
        return galsim.Gaussian(fwhm=fwhm)
    raise ValueError(f"PSF profile '{profile}' is not one of {', '.join(PSF_PROFILES)}")


def psf_beta_or_none(profile: str, beta):
    """β as the renderers take it: the Moffat's, or None for a Gaussian PSF."""
    return beta if profile == "moffat" else None


def psf_from_image(image: np.ndarray, pixel_scale: float) -> galsim.InterpolatedImage:
    """A PSF image (unit sum, the pixel's response included, as a star is seen) as a GalSim
    profile; galaxies are drawn through it without the pixel added again (:func:`draw_method`)."""
    import galsim
    return galsim.InterpolatedImage(galsim.Image(np.ascontiguousarray(image, np.float64), scale=pixel_scale))


def psf_rows(psf: np.ndarray | None, rows) -> np.ndarray | None:
    """The PSF images of the stamps ``rows`` (an index, mask or slice) of PSF images given as
    one ``(p, p)`` image for every stamp (kept as it is), ``(N, p, p)``, or None."""
    return psf if psf is None or np.ndim(psf) == 2 else psf[rows]


def draw_method(psf: galsim.GSObject) -> str:
    """How GalSim draws a galaxy through ``psf``: with the pixel's response, unless the PSF is
    an image, which holds it already."""
    import galsim
    return "no_pixel" if isinstance(psf, galsim.InterpolatedImage) else "auto"


def make_psf(cfg) -> galsim.GSObject:
    """The PSF of a :class:`~galcae.config.SimConfig` with fixed conditions (see
    :meth:`SimConfig.for_galaxy` for one galaxy's)."""
    if isinstance(cfg.psf.fwhm, tuple) or isinstance(cfg.psf.beta, tuple):
        raise ValueError("the PSF varies per galaxy: use cfg.for_galaxy(row) first")
    return psf_profile(cfg.psf.profile, cfg.psf.fwhm, cfg.psf.beta)


def galaxy_model(cfg, row: dict, psf: galsim.GSObject | None = None) -> galsim.GSObject:
    """The PSF-convolved GalSim profile of one parameter row (``ellipticity`` and
    ``position_angle`` for the shape; a bulge + disk row's components, :mod:`galcae.population`)."""
    import galsim

    from .population import components, has_bulge

    gsparams = galsim.GSParams(maximum_fft_size=cfg.max_fft_size)
    # a bulge + disk (galcae.population) is drawn from its components, not from its
    # supervised single-Sérsic equivalent
    parts = components(row) if has_bulge(row) else [row]
    profiles = [galsim.Sersic(n=p["sersic_n"], half_light_radius=p["half_light_radius"], flux=p["flux"],
                              gsparams=gsparams).shear(g=p["ellipticity"], beta=p["position_angle"] * galsim.degrees)
                for p in parts]
    galaxy = profiles[0] if len(profiles) == 1 else galsim.Add(profiles, gsparams=gsparams)
    return galsim.Convolve(galaxy, psf if psf is not None else make_psf(cfg), gsparams=gsparams)


def render_noiseless(cfg, row: dict, psf: galsim.GSObject | None = None) -> galsim.Image:
    """The noiseless, sky-free GalSim image of one galaxy in ADU, ``stamp_size`` square."""
    half = cfg.stamp_size / 2.0
    psf = psf if psf is not None else make_psf(cfg)
    # galcae's origin is the stamp's corner (galcae.params); GalSim offsets from the centre.
    return galaxy_model(cfg, row, psf).drawImage(
        nx=cfg.stamp_size, ny=cfg.stamp_size, scale=cfg.pixel_scale,
        offset=(row["x"] - half, row["y"] - half), method=draw_method(psf))


def render(cfg, theta: dict, psf: galsim.GSObject | None = None) -> np.ndarray:
    """Noiseless float64 ADU image of a parameter dict holding
    :data:`galcae.params.FIT_PARAMETERS` (the shape as ``g1``, ``g2``)."""
    ellipticity, position_angle = ellipticity_from_shear(theta["g1"], theta["g2"])
    row = {**theta, "ellipticity": float(ellipticity), "position_angle": float(position_angle)}
    return render_noiseless(cfg, row, psf).array.astype(np.float64)


#: Sub-pixels per side with which :func:`moffat_image` integrates the profile over a pixel.
SUBPIXELS = 7


def moffat_image(size: int, pixel_scale: float, fwhm: float, beta: float, dx: float = 0.0, dy: float = 0.0):
    """A Moffat PSF drawn on a ``size`` x ``size`` grid with the pixel's response (the profile
    averaged over each pixel, :data:`SUBPIXELS` squared samples), centred ``(dx, dy)`` pixels
    from the central pixel's centre, normalised to unit sum on the grid."""
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0)) / pixel_scale  # in pixels
    sub = (np.arange(SUBPIXELS) + 0.5) / SUBPIXELS - 0.5
    axis = (np.arange(size) - size // 2)[:, None] + sub[None, :]  # (pixel, sub-pixel)
    x, y = (axis - dx).ravel(), (axis - dy).ravel()
    profile = (1.0 + (x[None, :] ** 2 + y[:, None] ** 2) / alpha**2) ** (-beta)
    image = profile.reshape(size, SUBPIXELS, size, SUBPIXELS).mean(axis=(1, 3))
    return image / image.sum()


#: The central pixels (per side) of a PSF image that :func:`moffat_parameters` fits: the
#: same window whatever the image's size (5″ at 0.2″, four times the survey's worst
#: seeing), so a non-Moffat PSF gets the same conditions from a 25- or a 63-pixel image,
#: and a fit costs 16 ms, not 100 ms.
MOFFAT_WINDOW = 25


def moffat_parameters(psf_image: np.ndarray, pixel_scale: float) -> tuple[float, float]:
    """``(fwhm, beta)`` of the Moffat that best fits a PSF image (least squares over the
    central :data:`MOFFAT_WINDOW` pixels, each side normalised to unit sum, its centre free;
    :func:`moffat_image`): the conditions a seeing-conditioned model takes, measured from
    any PSF."""
    import galsim
    from scipy.optimize import least_squares

    image = np.asarray(psf_image, np.float64)
    cut = max(0, (image.shape[-1] - MOFFAT_WINDOW) // 2)
    image = image[cut:image.shape[-1] - cut, cut:image.shape[-1] - cut]
    image = image / image.sum()
    size = image.shape[-1]
    try:
        moments = galsim.hsm.FindAdaptiveMom(galsim.Image(image, scale=pixel_scale), strict=True)
        fwhm = float(np.clip(2.3548 * moments.moments_sigma * pixel_scale, 0.1, 9.0))
    except (galsim.GalSimHSMError, galsim.GalSimError, ValueError):
        fwhm = 4.0 * pixel_scale
    peak = image.max()

    def residuals(p):  # in units of the peak, so that the tolerances mean something
        return ((moffat_image(size, pixel_scale, *p) - image) / peak).ravel()

    fit = least_squares(residuals, [fwhm, 3.0, 0.0, 0.0], bounds=([0.05, 1.2, -1.5, -1.5], [10.0, 20.0, 1.5, 1.5]),
                        x_scale=[0.1 * fwhm, 0.5, 0.1, 0.1])
    return float(fit.x[0]), float(fit.x[1])


# --- the noise model --------------------------------------------------------------------------


def pixel_variance(noiseless, sky_level, gain: float, read_noise: float):
    """Per-pixel noise variance in ADU² of a sky-subtracted image of mean ``noiseless`` (a
    numpy array or a torch tensor; ``sky_level`` in ADU, broadcastable to it)."""
    positive = noiseless.clamp_min(0) if hasattr(noiseless, "clamp_min") else np.clip(noiseless, 0.0, None)
    return (positive + sky_level) / gain + (read_noise / gain) ** 2


def ccd_noise(noiseless, sky_level, gain: float, read_noise: float, generator=None):
    """A noisy draw of sky-subtracted torch images of mean ``noiseless`` (ADU; ``sky_level``
    broadcastable to it): what ``galsim.CCDNoise`` adds in the simulation (Poisson on source
    + sky in electrons, Gaussian read noise), for stamps rendered in PyTorch (training on
    fresh galaxies). Its variance is :func:`pixel_variance`."""
    import torch

    electrons = ((noiseless + sky_level) * gain).clamp_min(0)
    counts = torch.poisson(electrons, generator=generator)
    read = torch.randn(noiseless.shape, generator=generator, dtype=noiseless.dtype, device=noiseless.device)
    return counts / gain - sky_level + read * (read_noise / gain)


def sky_sigma(sky_level, gain: float, read_noise: float):
    """Sky-noise sigma in ADU of a blank pixel (sky Poisson + read noise)."""
    return np.sqrt(np.asarray(sky_level, float) / gain + (read_noise / gain) ** 2)


def sky_level_for_sigma(noise_sigma, gain: float, read_noise: float):
    """The inverse of :func:`sky_sigma`: the sky level in ADU whose blank-pixel noise is
    ``noise_sigma`` (0 where the read noise alone is larger)."""
    return np.maximum(gain * (np.asarray(noise_sigma, float) ** 2 - (read_noise / gain) ** 2), 0.0)


# --- signal to noise ------------------------------------------------------------------------


def optimal_snr(noiseless: np.ndarray, variance: np.ndarray) -> float:
    """Matched-filter S/N of a known galaxy, ``sqrt(sum(I² / var))``: the S/N of an optimal
    flux measurement."""
    return float(np.sqrt(np.sum(noiseless**2 / variance)))


#: Stamps per block of :func:`stamp_snr` (4 MB of float32 temporaries for 64x64 stamps).
SNR_BLOCK = 256


def stamp_snr(images: np.ndarray, noise_sigma: np.ndarray, gain: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Matched-filter S/N measured on the stamps, ``sqrt(sum(d² / var) - N_pixels)`` with
    ``var = noise_sigma² + d / gain``: unbiased for ``sqrt(sum(mu² / var))`` (as
    ``E[d²] = mu² + var``), within a few per cent of the truth above S/N 30, and free (a
    model rendering per stamp would cost 20-60 ms). ``mask``: ``(N, H, W)`` bool, pixels
    left out (neighbours, bad pixels)."""
    # float32, in place, a block of stamps at a time: it runs on every stamp of a catalog, and
    # temporaries the size of a whole chunk cost more in page faults than the arithmetic
    # (about 20 against 90 us per 64x64 stamp); the sum is accumulated in float64.
    d = np.asarray(images, np.float32)
    noise2 = np.broadcast_to(np.asarray(noise_sigma, np.float32) ** 2, (len(d),))
    chi2 = np.empty(len(d))
    var = np.empty((min(SNR_BLOCK, len(d)),) + d.shape[1:], np.float32)
    square = np.empty_like(var)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # noiseless, blank or absurd stamps: inf or NaN
        for start in range(0, len(d), SNR_BLOCK):
            block = d[start:start + SNR_BLOCK]
            v, sq = var[:len(block)], square[:len(block)]
            np.maximum(block, 0.0, out=v)
            v *= 1.0 / gain
            v += noise2[start:start + SNR_BLOCK, None, None]
            np.divide(np.square(block, out=sq), v, out=v)
            if mask is not None:
                v[mask[start:start + SNR_BLOCK]] = 0.0
            chi2[start:start + SNR_BLOCK] = v.sum(axis=(1, 2), dtype=np.float64)
    chi2 -= int(np.prod(d.shape[1:])) if mask is None else (~np.asarray(mask, bool)).sum(axis=(1, 2))
    return np.sqrt(np.clip(chi2, 0.0, None))
