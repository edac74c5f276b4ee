"""GalSim's sheared Sérsic galaxy, seen through a Moffat PSF and the pixel (or through a PSF
image), drawn in PyTorch: differentiable in every parameter and batched, for the CAE's
physical decoder and the refinement's fit.

The image is drawn in Fourier space, as GalSim draws it: the profile's transform (tabulated
once from GalSim's own ``kValue`` of unit profiles, interpolated in ``log k`` and ``log n``
or ``beta``) times the PSF's and the pixel's (or a PSF image's, which holds the pixel:
:meth:`SersicRenderer.psf_transform`), shifted to the galaxy's centre, then an
inverse FFT sampled at the pixel centres. The FFT's grid spans four stamps by default (the
refinement's fit takes from one to three where a galaxy's extent allows), so that little
of the light of the largest galaxies wraps around onto the stamp (with two, a 2.6″, n = 4.8
galaxy's wrapped wings showed at 4.6 σ of its noise; with three, 1.1 σ). On 300 `survey`
galaxies, the difference from GalSim's ``drawImage`` in units of the noise
(``sqrt(sum(diff² / variance))``) has a median of 0.003, a 99th percentile of 0.2 and a
maximum of 0.6; sampling twice as finely gains little (0.4 at most) for 4-6 times the time.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from .params import DRAWN

#: Sérsic indices GalSim can draw; the renderer clamps to them.
SERSIC_N = (0.3, 6.19)
#: Largest shear |g| drawn: |g| >= 1 is no ellipse, and a decoder's unconstrained latents
#: may ask for one; the renderer scales such a shear down to this (a fit's box, |g1|, |g2|
#: <= 0.7, stays inside it).
MAX_SHEAR = 0.99
#: Moffat betas tabulated; the renderer clamps to them.
MOFFAT_BETA = (1.5, 8.0)
#: ``k * scale`` range of the tables (scale: half-light radius or FWHM); beyond it, the end values.
LOG_K = (-3.0, 3.0)
#: FWHM / sigma of a Gaussian.
GAUSSIAN_FWHM = 2 * math.sqrt(2 * math.log(2))
#: Every parameter :class:`SersicRenderer` takes is in :data:`galcae.params.DRAWN`, in its
#: units (without ``psf_beta``: a Gaussian PSF).
#: The coordinates of :meth:`SersicRenderer.with_derivatives`: flux, radius and n in the log.
FITTED = ("log_flux", "log_half_light_radius", "log_sersic_n", "g1", "g2", "x", "y")


@lru_cache(maxsize=None)
def transform_tables(n_shape: int = 120, n_k: int = 480) -> tuple[np.ndarray, np.ndarray]:
    """``(sersic, moffat)``: GalSim's Fourier transforms of the unit-flux Sérsic of half-light
    radius 1 on a grid of ``log n`` x ``log k``, and of the Moffat of FWHM 1 on a grid of
    ``beta`` x ``log k``. About 5 s to compute; kept on disk (:func:`tables_cache`, one file
    per GalSim version and grid), so that every later process, such as each worker of a
    refining catalog, reads them in milliseconds (without importing GalSim: 0.5 s)."""
    from importlib.metadata import version

    cache = tables_cache(f"transform-tables-galsim{version('galsim')}-{n_shape}x{n_k}.npz")
    if cache is not None and cache.exists():
        try:
            with np.load(cache) as saved:
                if saved["sersic"].shape == saved["moffat"].shape == (n_shape, n_k):
                    return saved["sersic"], saved["moffat"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is computed again
    import galsim

    k = np.logspace(*LOG_K, n_k)
    sersic = np.empty((n_shape, n_k))
    for i, n in enumerate(np.geomspace(*SERSIC_N, n_shape)):
        profile = galsim.Sersic(n=n, half_light_radius=1.0)
        sersic[i] = [profile.kValue(kx, 0.0).real for kx in k]
    moffat = np.empty((n_shape, n_k))
    for i, beta in enumerate(np.linspace(*MOFFAT_BETA, n_shape)):
        profile = galsim.Moffat(beta=beta, fwhm=1.0)
        moffat[i] = [profile.kValue(kx, 0.0).real for kx in k]
    tables = sersic.astype(np.float32), moffat.astype(np.float32)
    if cache is not None:
        _save_quietly(cache, tables)
    return tables


def tables_cache(name: str):
    """``$GALCAE_CACHE`` (else ``$XDG_CACHE_HOME/galcae``, else ``~/.cache/galcae``) / ``name``;
    None where ``GALCAE_CACHE`` is empty (no cache)."""
    import os
    from pathlib import Path

    root = os.environ.get("GALCAE_CACHE")
    if root == "":
        return None
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "galcae"
    return Path(root) / name


def _save_quietly(path, tables) -> None:
    """Write the tables atomically; a cache that cannot be written is no error."""
    import os
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, sersic=tables[0], moffat=tables[1])
        os.replace(tmp.name, path)
    except OSError:
        pass


def _lookup(table: torch.Tensor, row: torch.Tensor, log_k: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``table`` (rows x log-k columns) at each galaxy's ``row`` in
    [0, 1] of the row axis, ``(B,)``, then at its ``log_k`` ``(B, H, W)``, clamped at the
    table's edges."""
    at = (log_k - LOG_K[0]) * ((table.shape[1] - 1) / (LOG_K[1] - LOG_K[0]))
    return _interpolate(_profiles(table, row), at.flatten(1))[0][0].reshape(log_k.shape)


def _profiles(table: torch.Tensor, row: torch.Tensor, slopes: bool = False) -> torch.Tensor:
    """Each galaxy's own profile along ``log k``: ``table`` interpolated at its ``row`` in
    [0, 1], ``(B, n_k + 2, 2)`` (value, difference to the next column), or with ``slopes``
    ``(B, n_k + 2, 4)`` (and the same of its derivative along ``row``: one-sided on the
    table's first and last rows, where a fit may end on n's bound, zero beyond). Padded by
    the end values at both ends, so that beyond the table the profile is flat (and its
    slope zero) with no masks: column ``m + 1`` holds the table's ``m``."""
    n_rows = table.shape[0]
    at_row = row.clamp(0, 1) * (n_rows - 1)
    i = at_row.detach().floor().clamp(max=n_rows - 2).long()
    w = (at_row - i)[:, None]
    low, high = table[i], table[i + 1]
    parts = [low + (high - low) * w]
    if slopes:
        inside = ((row >= 0) & (row <= 1)).to(table.dtype)[:, None] * (n_rows - 1)
        parts.append((high - low) * inside)
    packed = []
    for part in parts:
        padded = torch.cat([part[:, :1], part, part[:, -1:]], 1)
        packed += [padded, torch.diff(padded, dim=1, append=padded[:, -1:])]
    return torch.stack(packed, -1)


def _interpolate(profiles: torch.Tensor, at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The :func:`_profiles` at ``at`` (``(B, G)``, in table columns from the table's first):
    ``[value, d / d row (with slopes)]``, each ``(B, G)``, and d value / d column."""
    n_columns, width = profiles.shape[1], profiles.shape[2]
    at = (at + 1).clamp(0, n_columns - 1)
    # A NaN (a diverged network's latent) reads column 0 and stays NaN through ``frac``: the
    # image is NaN, the loss too, and training stops saying so (no bad index here).
    j = torch.nan_to_num(at.detach(), nan=0.0).floor().clamp_(max=n_columns - 2)
    index = j.long()
    if torch.is_grad_enabled() and profiles.requires_grad:
        found = torch.stack([profiles[..., c].gather(1, index) for c in range(width)], -1)
    else:  # each pixel's whole record in one gather, read as one wide number (7x faster)
        wide = {2: torch.float64, 4: torch.complex128}[width] if profiles.dtype == torch.float32 else None
        found = (profiles.contiguous().view(wide)[..., 0].gather(1, index).view(profiles.dtype)
                 .reshape(*index.shape, width) if wide else
                 torch.stack([profiles[..., c].gather(1, index) for c in range(width)], -1))
    frac = at - j
    values = [torch.addcmul(found[..., c], found[..., c + 1], frac) for c in range(0, width, 2)]
    return values, found[..., 1]


#: Grid points drawn together: each galaxy needs seven transforms on its grid for its
#: derivatives, and some megabytes at a time stay in the CPU's cache (on 256 survey
#: galaxies, an eighth of this or four times it took 1.2-1.5 times as long per galaxy; in
#: the refinement of 2,048 survey stamps, half of it took 1.1 times as long, twice 1.04).
#: Smaller grids take more galaxies at a time: fewer, larger operations.
CHUNK_POINTS = 4 * 129 * 256


def _chunks(p: dict[str, torch.Tensor], points: int) -> list[dict[str, torch.Tensor]]:
    """``p`` in parts of at most :data:`CHUNK_POINTS` grid points (``points`` per galaxy)."""
    n, size = len(p["flux"]), max(1, CHUNK_POINTS // points)
    return [{k: (v[i:i + size] if torch.is_tensor(v) and v.ndim else v) for k, v in p.items()}
            for i in range(0, n, size)] or [p]


class SersicRenderer(torch.nn.Module):
    """Draws ``(B, size, size)`` noiseless stamps in ADU of GalSim-convention galaxies:
    ``galsim.Sersic(n, half_light_radius, flux).shear(g1, g2)`` convolved with
    ``galsim.Moffat(beta, fwhm)`` (``galsim.Gaussian(fwhm)`` when ``psf_beta`` is None), drawn
    as ``drawImage`` does (pixel-convolved), centred at ``(x, y)`` pixels from the stamp's
    corner. Sizes are in arcsec, as in the simulation.
    """

    def __init__(self, stamp_size: int, pixel_scale: float, oversample: int = 1, pad: float = 4):
        super().__init__()
        self.size, self.pixel_scale, self.oversample = stamp_size, pixel_scale, oversample
        n = math.ceil(stamp_size * pad) * oversample  # pad: the grid's side in stamps, at least 1
        ky = 2 * math.pi * torch.fft.fftfreq(n, d=1.0 / oversample)
        kx = 2 * math.pi * torch.fft.rfftfreq(n, d=1.0 / oversample)
        self.grid = n
        # Transposed grids (kx along rows, ky along columns): the first inverse transform,
        # along y, then runs on contiguous memory, and its output is cut to the stamp's rows
        # before the second.
        self.register_buffer("kx", kx[:, None].expand(-1, n).contiguous(), persistent=False)
        self.register_buffer("ky", ky[None, :].expand(len(kx), -1).contiguous(), persistent=False)
        pixel = torch.sinc(self.kx / (2 * math.pi)) * torch.sinc(self.ky / (2 * math.pi))
        self.register_buffer("pixel", pixel, persistent=False)
        # kx^2, ky^2 and kx ky, flattened: what a shear's |A k|^2 combines (see _spectra).
        basis = torch.stack([self.kx ** 2, self.ky ** 2, self.kx * self.ky]).flatten(1)
        self.register_buffer("shear_basis", basis, persistent=False)
        # The tables come on first use (5 s): a model that only encodes never pays for them.
        self.register_buffer("sersic", None, persistent=False)
        self.register_buffer("moffat", None, persistent=False)

    def psf_transform(self, psf: np.ndarray) -> torch.Tensor:
        """The ``(N // 2 + 1, N)`` transform on this renderer's grid of a PSF image (``(p, p)``,
        odd, unit sum, sampled at the pixel scale with the pixel's response, centred on its
        central pixel), to draw through as ``p["psf_k"]`` in place of the Moffat: GalSim's
        ``InterpolatedImage`` of it, i.e. the image's discrete-time transform times the
        Quintic interpolant's (within 1e-4 of the peak of a galaxy GalSim draws through it)."""
        import galsim

        psf = np.asarray(psf, np.float64)
        offsets = np.arange(psf.shape[-1]) - psf.shape[-1] // 2
        kx, ky = self.kx[:, 0].double().numpy(), self.ky[0].double().numpy()
        along_x, along_y = np.exp(-1j * np.outer(kx, offsets)), np.exp(-1j * np.outer(ky, offsets))
        quintic = galsim.Quintic()
        transform = (along_x * quintic.kval(np.abs(kx))[:, None]) @ psf.T @ \
            (along_y * quintic.kval(np.abs(ky))[:, None]).T
        complex_dtype = torch.complex128 if self.kx.dtype == torch.float64 else torch.complex64
        return torch.as_tensor(transform, dtype=complex_dtype, device=self.kx.device)

    def forward(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """``p``: a ``(B,)`` tensor per name of :data:`DRAWN` (``psf_fwhm`` and ``psf_beta``
        unused where ``p["psf_k"]``, ``(B, N // 2 + 1, N)``, gives each galaxy's PSF as
        :meth:`psf_transform` or :meth:`psf_spectrum` makes it)."""
        return torch.cat([self._draw(self._spectra(part, derivatives=False))[:, 0]
                          for part in _chunks(p, self.kx.numel())])

    def with_derivatives(self, p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and their ``(B, 7, H, W)`` derivatives with respect to :data:`FITTED`
        (log flux, log radius, log n, g1, g2, x, y), in closed form in Fourier space: for
        about three times a rendering's time, where forward-mode autograd takes seven. Not
        differentiable itself (its outputs are the derivatives)."""
        with torch.no_grad():
            drawn = torch.cat([self._draw(self._spectra(part, derivatives=True))
                               for part in _chunks(p, self.kx.numel())])
        return drawn[:, 0], drawn  # d / d log flux is the image itself

    def _load_tables(self) -> None:
        if self.sersic is None:
            sersic, moffat = transform_tables()
            self.sersic, self.moffat = (torch.as_tensor(t, dtype=self.kx.dtype, device=self.kx.device)
                                        for t in (sersic, moffat))

    def psf_spectrum(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, N // 2 + 1, N)``: the transform of the Moffat of ``p["psf_fwhm"]`` and
        ``p["psf_beta"]`` (a Gaussian without ``psf_beta``) times the pixel's. A fit, whose
        PSF does not change from step to step, computes it once and passes it as
        ``p["psf_k"]``."""
        self._load_tables()
        fwhm = p["psf_fwhm"].to(self.kx.dtype)[:, None, None] / self.pixel_scale
        k = torch.sqrt(self.kx ** 2 + self.ky ** 2 + 1e-20)[None]
        if p.get("psf_beta") is None:  # a Gaussian PSF
            return torch.exp(-0.5 * (k * fwhm / GAUSSIAN_FWHM) ** 2) * self.pixel
        beta = p["psf_beta"].to(self.kx.dtype).clamp(*MOFFAT_BETA)
        beta_row = (beta - MOFFAT_BETA[0]) / (MOFFAT_BETA[1] - MOFFAT_BETA[0])
        return _lookup(self.moffat, beta_row, torch.log10(k * fwhm)) * self.pixel

    def _spectra(self, p: dict[str, torch.Tensor], derivatives: bool) -> torch.Tensor:
        """``(B, 1 or 7, N // 2 + 1, N)``: the image's transform, then its derivatives'
        (transposed: kx along rows). Each is a real factor (the profile, its slopes) times one
        complex factor per galaxy (flux, PSF and shift), multiplied once into the output."""
        self._load_tables()
        dtype, batch = self.kx.dtype, len(p["flux"])
        g1, g2 = (p[k].to(dtype) for k in ("g1", "g2"))
        inside = (MAX_SHEAR / torch.sqrt(g1 ** 2 + g2 ** 2 + 1e-30)).clamp(max=1.0)
        g1, g2 = g1 * inside, g2 * inside
        # GalSim's shear: f(A^-1 x), A = M / sqrt(det), M = [[1 + g1, g2], [g2, 1 - g1]],
        # det = 1 - g^2, whose transform is f^(A k) (A is symmetric with determinant 1).
        # |M k|^2 and the numerators of its log's derivatives in g1 and g2 are each a
        # combination of kx^2, ky^2 and kx ky: one matrix product for the batch.
        det = 1 - g1 ** 2 - g2 ** 2
        weights = [torch.stack([(1 + g1) ** 2 + g2 ** 2, (1 - g1) ** 2 + g2 ** 2, 4 * g2], -1)]
        if derivatives:  # (u kx - v ky) and (u ky + v kx), u, v = M k
            weights += [torch.stack([1 + g1, g1 - 1, torch.zeros_like(g1)], -1),
                        torch.stack([g2, g2, torch.full_like(g2, 2.0)], -1)]
        combined = torch.stack(weights, 1) @ self.shear_basis  # (B, 1 or 3, G)
        k2 = combined[:, 0].clamp_min(1e-20)  # >= 0 but for rounding; 0 at k = 0
        # The table's column at q = r_half |A k|, in log10 q: linear in log |M k|^2.
        per_column = (self.sersic.shape[1] - 1) / (LOG_K[1] - LOG_K[0])
        r_half = p["half_light_radius"].to(dtype) / self.pixel_scale
        offset = per_column * (torch.log10(r_half) - 0.5 * torch.log10(det) - LOG_K[0])
        at = torch.log(k2) * (0.5 * per_column / math.log(10)) + offset[:, None]
        n = p["sersic_n"].to(dtype).clamp(*SERSIC_N)
        n_row = torch.log(n / SERSIC_N[0]) / math.log(SERSIC_N[1] / SERSIC_N[0])
        values, slope = _interpolate(_profiles(self.sersic, n_row, slopes=derivatives), at)
        # A PSF image's transform (which holds the pixel) or the Moffat's, computed once by a fit.
        psf = p["psf_k"] if p.get("psf_k") is not None else self.psf_spectrum(p)
        # Moved by half a pixel, so that the grid's samples fall on the pixel centres; the
        # phase is separable in x and y (trigonometry on the axes, not on the whole grid).
        col = lambda v: v.to(dtype)[:, None, None]  # noqa: E731 - (B,) -> (B, 1, 1)
        along_x = col(p["flux"]) * torch.exp(-1j * self.kx[:, :1] * (col(p["x"]) - 0.5))
        factor = (along_x * torch.exp(-1j * self.ky[:1] * (col(p["y"]) - 0.5)) * psf).reshape(batch, -1)
        shape = (batch, -1, *self.kx.shape)
        if not derivatives:
            return (factor * values[0]).reshape(shape)
        return self._derivative_spectra(values, slope, combined, k2, (g1, g2, det), factor).reshape(shape)

    def _derivative_spectra(self, values, slope, combined, k2, shear, factor) -> torch.Tensor:
        """``(B, 7, G)`` transforms of the image and its derivatives along :data:`FITTED` from
        the profile's ``values`` (value, d / d row), its ``slope`` along the table's columns,
        the shear's combinations and the complex ``factor`` ``(B, G)``."""
        g1, g2, det = shear
        batch, size = slope.shape
        per_column = (self.sersic.shape[1] - 1) / (LOG_K[1] - LOG_K[0])
        real = slope.new_empty(batch, len(FITTED), size)
        value = values[0]
        real[:, 0] = value  # the image, which is also d / d log flux
        # d / d log r_half: the column moves by per_column / ln 10 per unit log r_half.
        radial = torch.mul(slope, per_column / math.log(10), out=real[:, 1])
        torch.mul(values[1], 1 / math.log(SERSIC_N[1] / SERSIC_N[0]), out=real[:, 2])  # d / d log n
        # d ln q / d g = (u kx - v ky) / |M k|^2 + g1 / det (g2: (u ky + v kx), g2), times d / d ln q.
        inverse = k2.reciprocal()
        for i, g in ((1, g1), (2, g2)):
            torch.mul(torch.addcmul(g[:, None] / det[:, None], combined[:, i], inverse), radial, out=real[:, 2 + i])
        torch.mul(value, self.kx.flatten(), out=real[:, 5])  # d / d x and d / d y: times -i k
        torch.mul(value, self.ky.flatten(), out=real[:, 6])
        out = real * factor[:, None]  # one complex product for all seven (into slices: 3x slower)
        out[:, 5:] *= -1j
        return out

    def _draw(self, spectra: torch.Tensor) -> torch.Tensor:
        # irfft2 in two passes, keeping only the stamp's rows after the first: the second
        # pass transforms a quarter of the grid (half of irfft2's time at pad 4).
        stamp = slice(0, self.size * self.oversample, self.oversample)
        rows = torch.fft.ifft(spectra, dim=-1)[..., stamp].transpose(-1, -2)
        return torch.fft.irfft(rows, n=self.grid, dim=-1)[..., stamp] * self.oversample ** 2


class LatentRenderer(torch.nn.Module):
    """Supervised latents (and standardised conditions) -> the normalised image the CAE's
    ``sersic`` decoder draws: the latents' physical parameters through
    :class:`SersicRenderer`, plus any residual light, through the model's pixel stretch. Its
    constants come from the model's ``model.json`` (the scalings): it has no weights.

    ``psf``: the PSF parameters the conditions do not give, fixed (the training set's one
    PSF, as :func:`training_psf` reads it; ``psf_beta`` None for a Gaussian)."""

    def __init__(self, scaling, conditioning, normalization, stamp_size: int, pixel_scale: float, grid: int = 4,
                 psf: dict | None = None):
        super().__init__()
        self.fixed = dict(psf or {})
        given = scaling.names + (conditioning.names if conditioning else ()) + tuple(self.fixed)
        needed = [n for n in DRAWN if n not in given]
        if needed:
            raise ValueError(f"the sersic decoder draws from {', '.join(DRAWN)}: "
                             f"supervise or condition on {', '.join(needed)} too")
        self.scales = {"latent": scaling, "condition": conditioning}
        self.normalization = normalization
        self.render = SersicRenderer(stamp_size, pixel_scale, pad=grid)

    def galaxy(self, z_phys: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """``(B, n_supervised)``, ``(B, n_conditions)`` or None -> the ``(B, H, W)`` galaxies in ADU."""
        p = {k: (None if v is None else z_phys.new_full((len(z_phys),), v)) for k, v in self.fixed.items()}
        if c is not None:
            p.update(self.scales["condition"].to_physical(c.to(z_phys.dtype)))
        p.update(self.scales["latent"].to_physical(z_phys))
        return self.render(p).to(z_phys.dtype)

    def forward(self, z_phys: torch.Tensor, c: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor:
        """The galaxy plus ``residual`` ``(B, 1, H, W)``, in units of the sky noise (the
        stretch's softening), as ``(B, 1, H, W)`` logits of the normalised image."""
        adu = self.galaxy(z_phys, c).unsqueeze(1) + residual * self.normalization.softening
        return self.normalization.forward(adu).clamp(1e-6, 1 - 1e-6).logit()


def training_psf(simulate: dict, conditions: tuple[str, ...]) -> dict:
    """The PSF parameters a model's conditions leave out, fixed at its training set's one PSF
    (``simulate``: the set's ``simulate`` config as saved in ``model.json``): ``psf_fwhm``,
    and ``psf_beta`` (None for a Gaussian). A PSF that varies over the set must be a
    condition: drawn at one value, the decoder would be wrong for every other galaxy."""
    psf = simulate.get("psf", {})
    gaussian = psf.get("profile", "gaussian") == "gaussian"
    fixed = {}
    for name, key in (("psf_fwhm", "fwhm"), ("psf_beta", "beta")):
        if name in conditions:
            continue
        if name == "psf_beta" and gaussian:
            fixed[name] = None
            continue
        value = psf.get(key)
        if not isinstance(value, (int, float)):
            raise ValueError(f"the sersic decoder draws each galaxy through its PSF, and the training "
                             f"set's psf.{key} is {value!r}, not one value: add {name} to the conditions")
        fixed[name] = float(value)
    return fixed
