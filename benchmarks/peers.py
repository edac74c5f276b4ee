"""galcae's batched refinement side by side with its peers: AstroPhot's batched Levenberg-Marquardt
(`BatchLM`, and its one-galaxy `LM`) and Imfit (`pyimfit`), all from the same start on the same
stamps through the same PSF, timed and scored against the GalSim + scipy fit (`fit_stamp`).

    pip install -e ".[peers]"                       # astrophot, pyimfit (see pyproject.toml)
    python benchmarks/peers.py                      # 32 bright survey stamps, CPU, torch's threads
    python benchmarks/peers.py --n 8 --threads 1    # a quick look
    python benchmarks/peers.py --n 8 --ap-oversample 3 --imfit-oversample 5   # finer PSFs (slow)
    python benchmarks/peers.py --device cuda        # AstroPhot on the GPU (galcae's fit_batch has no device)

The stamps: the `survey` config's simulation (64 x 64 pixels of 0.2", CCD noise on a sky of
100-2000 ADU, a Moffat PSF of its own FWHM 0.5-1.2" and beta 2.5-5 per stamp), the first `--n`
with matched-filter S/N >= `--min-snr` (what galcae refines). The start, the same for every
method: the truth with flux, r½ and n times exp(0.1 z), g1 and g2 + 0.05 z, x and y + 0.3 z
pixels (z standard normal, seeded), clipped into the fit's bounds. The weights, the same for
every method: the noise model's per-pixel variance (`physics.pixel_variance`) at the start's
GalSim model, as `fit_stamp` and `fit_batch` fix them.

The PSF: `fit_stamp` and `fit_batch` take each stamp's Moffat; `fit_batch --psf` and the peers
take GalSim's drawing of that Moffat, `--psf-size` pixels square. galcae's PSF-image path takes
it with the pixel's response (as a star is seen; galcae draws through it as GalSim's
InterpolatedImage). AstroPhot and Imfit integrate the galaxy over the pixels (AstroPhot:
midpoint sampling refined by its `bright` integration; Imfit: its central subsampling) and
convolve that with the PSF image, so they get the Moffat sampled at pixel centres (GalSim's
`no_pixel`): through the pixel-convolved image they would count the pixel twice (1-6 % of the
peak). `--ap-oversample` / `--imfit-oversample` K > 1 instead give them the Moffat drawn K times
finer (AstroPhot's PSF `upsample`, Imfit's PSF-oversampling region over the whole stamp, without
subsampling), which draws the most compact galaxies (r½ < 0.2") more exactly at 3-30 times the
cost. The script checks each method's model at the true parameters against the GalSim stamp
(< 1 % of the peak) before anything is timed.

Conventions, converted both ways (galcae's in `galcae.params`): GalSim's r½ is the circularised
radius of a sheared Sérsic, q = (1 - |g|) / (1 + |g|); AstroPhot's Re and Imfit's r_e are along
the major axis, r½ / sqrt(q); their position angles are from +y, counter-clockwise, galcae's
from +x; AstroPhot's centre is in arcsec from the first pixel's centre, Imfit's in FITS pixels
(the first pixel's centre at 1), galcae's x from the stamp's edge; Ie (AstroPhot, flux/arcsec²)
and I_e (Imfit, ADU/pixel) are the surface brightness at Re, flux = 2 pi n q Re² Ie e^b b^(-2n)
Gamma(2n), b the series both codes use.

Prints: the model check, then per method the time per galaxy (wall clock after a warm-up, one
process), how many converged, how many times slower than galcae's `fit_batch`, and the median and
90th percentile of |method - reference| / reference error for each parameter over the stamps
where both converged.
"""

import argparse
import contextlib
import logging
import os
import time
import warnings

import galsim
import numpy as np
import torch
from scipy.special import gamma

from galcae.config import load_stage
from galcae.estimate.batchfit import fit_batch
from galcae.estimate.fit import fit_stamp, inside_bounds
from galcae.params import FIT_PARAMETERS, OK, ellipticity_from_shear, shear_from_ellipticity
from galcae.physics import make_psf, pixel_variance, render
from galcae.render import SersicRenderer, transform_tables
from galcae.simulate import draw_parameters, render_chunk

SHORT = {"flux": "flux", "half_light_radius": "r½", "sersic_n": "n", "g1": "g1", "g2": "g2", "x": "x", "y": "y"}
CHECK_LIMIT = 0.01  # of the peak


# --- the stamps, their PSFs, the start ----------------------------------------------------------


def stamps(n: int, min_snr: float, seed: int):
    """``(cfg, truth, images)`` of the first ``n`` survey stamps with S/N >= ``min_snr``."""
    cfg = load_stage("simulate", "survey", [f"n_galaxies={max(8 * n, 32)}", f"seed={seed}"])
    table = draw_parameters(cfg)
    rendered = render_chunk(cfg, table)
    pick = np.flatnonzero((rendered["status"] == OK) & (rendered["snr"] >= min_snr))[:n]
    truth = {k: v[pick] for k, v in table.items()}
    truth["snr"] = rendered["snr"][pick]
    return cfg, truth, rendered["images"][pick].astype(np.float64)


def perturbed(cfg, truth: dict, seed: int) -> dict:
    """The start: the truth, 10 % off in flux, r½ and n, 0.05 in g, 0.3 pixel in x and y."""
    rng = np.random.default_rng(seed + 1)
    n = len(truth["flux"])
    start = {k: truth[k] * np.exp(0.1 * rng.standard_normal(n)) for k in ("flux", "half_light_radius", "sersic_n")}
    start.update({k: truth[k] + 0.05 * rng.standard_normal(n) for k in ("g1", "g2")})
    start.update({k: truth[k] + 0.3 * rng.standard_normal(n) for k in ("x", "y")})
    rows = [inside_bounds({k: start[k][i] for k in FIT_PARAMETERS}, cfg) for i in range(n)]
    return {k: np.array([r[k] for r in rows]) for k in FIT_PARAMETERS}


def row(values: dict, i: int) -> dict:
    return {k: float(values[k][i]) for k in FIT_PARAMETERS}


def galaxy_cfg(cfg, truth: dict, i: int):
    return cfg.for_galaxy({k: truth[k][i] for k in ("psf_fwhm", "psf_beta", "sky_level")})


def moffat(truth: dict, i: int) -> galsim.GSObject:
    return galsim.Moffat(beta=float(truth["psf_beta"][i]), fwhm=float(truth["psf_fwhm"][i]))


def psf_image(psf: galsim.GSObject, size: int, scale: float, oversample: int = 1, pixel: bool = True) -> np.ndarray:
    """The PSF drawn ``size`` pixels square, ``oversample`` times finer, with each (fine)
    pixel's response or (``pixel=False``) sampled at the pixel centres; unit sum."""
    image = psf.drawImage(nx=size * oversample, ny=size * oversample, scale=scale / oversample,
                          method="auto" if pixel else "no_pixel").array
    return image / image.sum()


def peer_psf(psf: galsim.GSObject, size: int, scale: float, oversample: int) -> np.ndarray:
    """A peer's PSF image: sampled at the pixel scale (the peer integrates the galaxy over the
    pixel), or ``oversample`` > 1 times finer with the fine pixel's response."""
    return psf_image(psf, size, scale, oversample, pixel=oversample > 1)


# --- conventions ---------------------------------------------------------------------------------


def sersic_b(n):
    """The b(n) of AstroPhot's and Imfit's Sérsic (Ciotti & Bertin's series)."""
    x = 1.0 / n
    return 2 * n - 1 / 3 + x * (4 / 405 + x * (46 / 25515 + x * (131 / 1148175 - 2194697 / 30690717750 * x)))


def surface_brightness(flux, re, n, q):
    """The surface brightness at the major-axis half-light radius ``re`` (flux per unit of re²)."""
    b = sersic_b(n)
    return flux / (2 * np.pi * n * q * re**2 * np.exp(b) * b ** (-2 * n) * gamma(2 * n))


def to_elliptical(values: dict, scale: float) -> dict:
    """galcae's parameters -> q, position angle from +y (degrees), major-axis Re and Ie (arcsec)."""
    e, pa = ellipticity_from_shear(values["g1"], values["g2"])
    q = (1 - e) / (1 + e)
    re = values["half_light_radius"] / np.sqrt(q)
    return {"q": q, "pa": (np.asarray(pa) + 90.0) % 180.0, "re": re,
            "ie": surface_brightness(values["flux"], re, values["sersic_n"], q), "n": values["sersic_n"]}


def from_elliptical(q, pa_from_y, re, ie, n, x, y) -> dict:
    """The inverse of :func:`to_elliptical`, given galcae's x and y."""
    b = sersic_b(n)
    g1, g2 = shear_from_ellipticity((1 - q) / (1 + q), (np.asarray(pa_from_y) - 90.0) % 180.0)
    return {"flux": 2 * np.pi * n * q * re**2 * ie * np.exp(b) * b ** (-2 * n) * gamma(2 * n),
            "half_light_radius": re * np.sqrt(q), "sersic_n": n, "g1": g1, "g2": g2, "x": x, "y": y}


@contextlib.contextmanager
def quiet_stdout():
    """Imfit's C++ prints progress lines to the process's stdout: send them nowhere."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


# --- AstroPhot -----------------------------------------------------------------------------------


class AstroPhot:
    """AstroPhot's Sérsic (midpoint sampling, `bright` integration) through :func:`peer_psf`."""

    def __init__(self, cfg, truth, psf_size: int, oversample: int, device: str):
        import astrophot as ap

        self.ap, self.cfg, self.truth = ap, cfg, truth
        ap.config.DEVICE = device
        self.psfs = [peer_psf(moffat(truth, i), psf_size, cfg.pixel_scale, oversample)
                     for i in range(len(truth["flux"]))]
        self.oversample = oversample

    def target(self, i: int, image: np.ndarray, variance: np.ndarray | None = None):
        ap = self.ap
        kwargs = {} if variance is None else {"variance": variance}
        return ap.TargetImage(name=f"stamp{i}", data=image, pixelscale=self.cfg.pixel_scale,
                              psf=ap.PSFImage(data=self.psfs[i], upsample=self.oversample), **kwargs)

    def model(self, target, values: dict):
        """A Sérsic at ``values`` (one galaxy's, or arrays: a batch's) on ``target``'s grid."""
        s = self.cfg.pixel_scale
        p = to_elliptical(values, s)
        first = {k: np.ravel(v)[0] for k, v in p.items()}
        x, y = np.ravel(values["x"]), np.ravel(values["y"])
        model = self.ap.Model(model_type="sersic galaxy model", name="galaxy", target=target,
                              center=[s * (x[0] - 0.5), s * (y[0] - 0.5)], q=first["q"],
                              PA=np.deg2rad(first["pa"]), n=first["n"], Re=first["re"], Ie=first["ie"],
                              sampling_mode="midpoint", integrate_mode="bright")
        model.initialize()
        if np.ndim(values["flux"]):  # a batch: one value per stamp
            model.center = tuple((s * (a - 0.5), s * (b - 0.5)) for a, b in zip(x, y))
            model.q, model.PA = tuple(p["q"]), tuple(np.deg2rad(p["pa"]))
            model.n, model.Re, model.Ie = tuple(p["n"]), tuple(p["re"]), tuple(p["ie"])
        return model

    def values(self, model) -> dict:
        s = self.cfg.pixel_scale
        get = {k: np.asarray(self.ap.backend.to_numpy(getattr(model, k).value), float)
               for k in ("center", "q", "PA", "n", "Re", "Ie")}
        centre = get["center"].reshape(-1, 2)
        return from_elliptical(get["q"], np.rad2deg(get["PA"]), get["Re"], get["Ie"], get["n"],
                               centre[:, 0] / s + 0.5, centre[:, 1] / s + 0.5)

    def draw(self, i: int, values: dict) -> np.ndarray:
        size = self.cfg.stamp_size
        model = self.model(self.target(i, np.zeros((size, size))), values)
        return np.asarray(self.ap.backend.to_numpy(model().data), float)

    def batch_fit(self, images, variances, start: dict, rows, max_iter: int):
        """BatchLM on the stamps ``rows``: ``(values, converged)``."""
        ap = self.ap
        batch = ap.TargetImageBatch([self.target(i, images[i], variances[i]) for i in rows])
        model = self.model(batch.images[0], {k: v[rows] for k, v in start.items()})
        fit = ap.fit.BatchLM(model, batch, batch.window, max_iter=max_iter).fit()
        loss = np.asarray(fit.loss_history)  # (steps + 1, stamps)
        # Per stamp, AstroPhot's own test: chi² no longer falling by its relative tolerance.
        change = (loss[-2] - loss[-1]) / loss[-1] if len(loss) > 1 else np.full(len(rows), np.inf)
        converged = (change < 10 * fit.relative_tolerance) & np.isfinite(loss[-1])
        return self.values(model), converged

    def single_fit(self, image, variance, start: dict, i: int, max_iter: int):
        model = self.model(self.target(i, image, variance), row(start, i))
        fit = self.ap.fit.LM(model, max_iter=max_iter).fit()
        return {k: float(np.ravel(v)[0]) for k, v in self.values(model).items()}, "success" in fit.message


# --- Imfit ---------------------------------------------------------------------------------------


class Imfit:
    """Imfit's Sérsic through :func:`peer_psf`: subsampled centre at the pixel scale, or with
    ``oversample`` > 1 a PSF-oversampling region over the whole stamp (no subsampling)."""

    ORDER = ("X0", "Y0", "PA", "ell", "n", "I_e", "r_e")

    def __init__(self, cfg, truth, psf_size: int, oversample: int, threads: int):
        import pyimfit

        self.pyimfit, self.cfg, self.truth, self.threads = pyimfit, cfg, truth, threads
        self.psf_size, self.oversample = psf_size, oversample

    def fitter(self, i: int, values: dict):
        pyimfit, s, size = self.pyimfit, self.cfg.pixel_scale, self.cfg.stamp_size
        p = to_elliptical(values, s)
        functions = pyimfit.FunctionSetDescription("galaxy")
        functions.x0.setValue(values["x"] + 0.5, [values["x"] - 5.5, values["x"] + 6.5])
        functions.y0.setValue(values["y"] + 0.5, [values["y"] - 5.5, values["y"] + 6.5])
        sersic = pyimfit.make_imfit_function("Sersic")
        sersic.PA.setValue(p["pa"], [p["pa"] - 180, p["pa"] + 180])
        sersic.ell.setValue(1 - p["q"], [0.0, 0.95])
        sersic.n.setValue(p["n"], [0.36, 6.0])
        sersic.I_e.setValue(p["ie"] * s**2, [0.0, 1e3 * p["ie"] * s**2])
        sersic.r_e.setValue(p["re"] / s, [0.02, 2 * size])
        functions.addFunction(sersic)
        psf = moffat(self.truth, i)
        fine = self.oversample > 1
        with quiet_stdout():
            fitter = pyimfit.Imfit(pyimfit.ModelDescription([functions]), psf=peer_psf(psf, self.psf_size, s, 1),
                                   subsampling=not fine, maxThreads=self.threads)
            if not fine:
                return fitter, {}
            oversampler = pyimfit.MakePsfOversampler(peer_psf(psf, self.psf_size, s, self.oversample),
                                                     self.oversample, (1, size, 1, size))
        return fitter, {"psf_oversampling_list": [oversampler]}

    def values(self, params) -> dict:
        p = dict(zip(self.ORDER, np.asarray(params, float)))
        s = self.cfg.pixel_scale
        return {k: float(v) for k, v in from_elliptical(1 - p["ell"], p["PA"], p["r_e"] * s, p["I_e"] / s**2,
                                                         p["n"], p["X0"] - 0.5, p["Y0"] - 0.5).items()}

    def draw(self, i: int, values: dict) -> np.ndarray:
        size = self.cfg.stamp_size
        fitter, extra = self.fitter(i, values)
        with quiet_stdout():
            fitter.loadData(np.zeros((size, size)), error=np.ones((size, size)), **extra)
            return np.asarray(fitter.getModelImage(newParameters=fitter.getRawParameters()), float)

    def fit(self, image, variance, start: dict, i: int):
        fitter, extra = self.fitter(i, row(start, i))
        with quiet_stdout():
            result = fitter.fit(image, error=variance, error_type="variance", solver="LM", **extra)
        return self.values(result.params), bool(result.fitConverged)


# --- galcae --------------------------------------------------------------------------------------


def galcae_draw(cfg, truth: dict, values: dict, psf_images: np.ndarray | None) -> np.ndarray:
    """galcae's renderer (what fit_batch draws with) at ``values``, through each stamp's Moffat
    or its PSF image."""
    n = len(values["flux"])
    renderer = SersicRenderer(cfg.stamp_size, cfg.pixel_scale)
    if psf_images is None:
        psf_k = renderer.psf_spectrum({k: torch.as_tensor(truth[k], dtype=torch.float32)
                                       for k in ("psf_fwhm", "psf_beta")})
    else:
        psf_k = torch.stack([renderer.psf_transform(p) for p in psf_images])
    params = {k: torch.as_tensor(values[k], dtype=torch.float32) for k in FIT_PARAMETERS}
    with torch.no_grad():
        return renderer({**params, "psf_k": psf_k}).double().numpy().reshape(n, cfg.stamp_size, cfg.stamp_size)


# --- the run -------------------------------------------------------------------------------------


def check_models(cfg, truth, noiseless, draws: dict) -> None:
    """Each method's model at the truth against GalSim's, as a fraction of the stamp's peak."""
    print(f"\nModel check: each method's model at the true parameters - GalSim's noiseless stamp, "
          f"max over pixels / peak (must be < {100 * CHECK_LIMIT:g} %):\n")
    print("| model | median | max | stamps < 1 % | worst stamp (n, r½, PSF FWHM) |")
    print("|---|---|---|---|---|")
    for label, images in draws.items():
        if isinstance(images, str):
            print(f"| {label} | {images} | | | |")
            continue
        worst = np.abs(images - noiseless).reshape(len(images), -1).max(1) / noiseless.reshape(len(images), -1).max(1)
        w = int(np.argmax(worst))
        print(f"| {label} | {100 * np.median(worst):.2f} % | {100 * worst.max():.2f} % "
              f"| {int((worst < CHECK_LIMIT).sum())} / {len(worst)} | {truth['sersic_n'][w]:.2f}, "
              f"{truth['half_light_radius'][w]:.2f}\", {truth['psf_fwhm'][w]:.2f}\" |")


def timed(function, *args):
    t0 = time.perf_counter()
    out = function(*args)
    return out, time.perf_counter() - t0


def one_by_one(fit, images, variances, start, n):
    """``fit(image, variance, start, i) -> (values, converged)`` over the stamps, as arrays."""
    rows = [fit(images[i], variances[i], start, i) for i in range(n)]
    return {k: np.array([r[0][k] for r in rows]) for k in FIT_PARAMETERS}, np.array([r[1] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="stamps fitted")
    parser.add_argument("--min-snr", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--psf-size", type=int, default=51, help="PSF images' pixels per side (odd)")
    parser.add_argument("--ap-oversample", type=int, default=1, help="AstroPhot's PSF `upsample` (1: none)")
    parser.add_argument("--imfit-oversample", type=int, default=1, help="Imfit's PSF oversampling (1: none)")
    parser.add_argument("--max-iter", type=int, default=100, help="AstroPhot's LM iterations at most")
    parser.add_argument("--threads", type=int, default=None, help="torch's and Imfit's threads [torch's default]")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: AstroPhot's device")
    parser.add_argument("--no-ap-single", action="store_true", help="leave out AstroPhot's one-galaxy LM")
    args = parser.parse_args()
    if args.psf_size % 2 == 0:
        parser.error("--psf-size must be odd")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA device here (torch {torch.__version__}); nothing run.")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    cfg, truth, images = stamps(args.n, args.min_snr, args.seed)
    n = len(images)
    start = perturbed(cfg, truth, args.seed)
    noiseless = np.stack([render(galaxy_cfg(cfg, truth, i), row(truth, i), make_psf(galaxy_cfg(cfg, truth, i)))
                          for i in range(n)])
    variances = np.stack([pixel_variance(render(galaxy_cfg(cfg, truth, i), row(start, i),
                                                make_psf(galaxy_cfg(cfg, truth, i))),
                                         truth["sky_level"][i], cfg.noise.gain, cfg.noise.read_noise)
                          for i in range(n)])
    psf_images = np.stack([psf_image(moffat(truth, i), args.psf_size, cfg.pixel_scale) for i in range(n)])
    conditions = {k: truth[k] for k in ("psf_fwhm", "psf_beta", "sky_level")}
    print(f"{n} survey stamps with S/N >= {args.min_snr:g} (seed {args.seed}; S/N {np.min(truth['snr']):.0f}-"
          f"{np.max(truth['snr']):.0f}, median {np.median(truth['snr']):.0f}); per-stamp Moffat PSF "
          f"(FWHM {truth['psf_fwhm'].min():.2f}-{truth['psf_fwhm'].max():.2f}\", beta "
          f"{truth['psf_beta'].min():.1f}-{truth['psf_beta'].max():.1f}); PSF images {args.psf_size} px; "
          f"start: truth x exp(0.1 z) in flux, r½, n, + 0.05 z in g, + 0.3 z px in x, y")
    print(f"torch {torch.__version__}, threads {threads}; device for AstroPhot: {args.device}")

    peers, missing = {}, {}
    try:
        # AstroPhot's import logs to ./AstroPhot.log unless the root logger has a handler already.
        logging.getLogger().addHandler(logging.NullHandler())
        import astrophot

        astrophot.config.set_logging_output(stdout=False)
        peers["astrophot"] = AstroPhot(cfg, truth, args.psf_size, args.ap_oversample, args.device)
        print(f"astrophot {astrophot.__version__} (float64, its default), PSF upsample {args.ap_oversample}, "
              f"max {args.max_iter} iterations")
    except ImportError:
        missing["AstroPhot"] = "not installed: pip install astrophot"
    try:
        import pyimfit

        peers["imfit"] = Imfit(cfg, truth, args.psf_size, args.imfit_oversample, threads)
        print(f"pyimfit {pyimfit.__version__}, {threads} threads, PSF oversampling {args.imfit_oversample}"
              + (" (subsampling off)" if args.imfit_oversample > 1 else " (its central subsampling)"))
    except ImportError:
        missing["Imfit"] = "not installed: pip install pyimfit"

    # The model check, before anything is timed.
    transform_tables()  # once per process (seconds): not a per-stamp cost
    draws = {"galcae, Moffat": galcae_draw(cfg, truth, truth, None),
             f"galcae, PSF image {args.psf_size} px": galcae_draw(cfg, truth, truth, psf_images)}
    if "astrophot" in peers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            draws[f"AstroPhot, PSF upsample {args.ap_oversample}"] = np.stack(
                [peers["astrophot"].draw(i, row(truth, i)) for i in range(n)])
    if "imfit" in peers:
        draws[f"Imfit, PSF oversampling {args.imfit_oversample}"] = np.stack(
            [peers["imfit"].draw(i, row(truth, i)) for i in range(n)])
    draws.update(missing)
    check_models(cfg, truth, noiseless, draws)

    results, notes = {}, {}
    # The reference: GalSim + scipy, one stamp at a time, through the Moffat.
    reference, seconds = timed(lambda: [fit_stamp(images[i], galaxy_cfg(cfg, truth, i),
                                                  make_psf(galaxy_cfg(cfg, truth, i)), guess=row(start, i))
                                        for i in range(n)])
    ref = {k: np.array([r[k] for r in reference]) for k in FIT_PARAMETERS}
    ref_err = {k: np.array([r[f"{k}_err"] for r in reference]) for k in FIT_PARAMETERS}
    results["GalSim + scipy (reference), one by one"] = (
        ref, np.array([r["status"] == OK for r in reference]), seconds)

    # galcae: a warm-up on two stamps, then the batch.
    fit_batch(images[:2], cfg, {k: v[:2] for k, v in conditions.items()}, {k: v[:2] for k, v in start.items()})
    out, seconds = timed(fit_batch, images, cfg, conditions, start)
    results["galcae fit_batch, Moffat"] = ({k: out[k] for k in FIT_PARAMETERS}, out["status"] == OK, seconds)
    sky = {"sky_level": conditions["sky_level"]}
    fit_batch(images[:2], cfg, {"sky_level": sky["sky_level"][:2]}, {k: v[:2] for k, v in start.items()},
              psf=psf_images[:2])
    out, seconds = timed(lambda: fit_batch(images, cfg, sky, start, psf=psf_images))
    results[f"galcae fit_batch, PSF image {args.psf_size} px"] = (
        {k: out[k] for k in FIT_PARAMETERS}, out["status"] == OK, seconds)
    if args.device != "cpu":
        notes["galcae"] = f"fit_batch takes no device: galcae ran on the CPU, AstroPhot on {args.device}"

    if "astrophot" in peers:
        ap = peers["astrophot"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ap.batch_fit(images, variances, start, np.arange(min(2, n)), 2)  # warm-up
            (values, converged), seconds = timed(ap.batch_fit, images, variances, start, np.arange(n), args.max_iter)
            results[f"AstroPhot BatchLM ({args.device})"] = (values, converged, seconds)
            if not args.no_ap_single:
                values, converged = one_by_one(lambda *a: ap.single_fit(*a, args.max_iter), images[:1],
                                               variances, start, 1)  # warm-up
                (values, converged), seconds = timed(
                    one_by_one, lambda *a: ap.single_fit(*a, args.max_iter), images, variances, start, n)
                results[f"AstroPhot LM, one by one ({args.device})"] = (values, converged, seconds)
    if "imfit" in peers:
        one_by_one(peers["imfit"].fit, images[:1], variances, start, 1)  # warm-up
        (values, converged), seconds = timed(one_by_one, peers["imfit"].fit, images, variances, start, n)
        results["Imfit (LM), one by one"] = (values, converged, seconds)

    report(results, ref, ref_err, n, threads, missing, notes)


def report(results: dict, ref: dict, ref_err: dict, n: int, threads: int, missing: dict, notes: dict) -> None:
    base = results["galcae fit_batch, Moffat"][2] / n
    ref_ok = results["GalSim + scipy (reference), one by one"][1] & np.all(
        [np.isfinite(ref_err[k]) & (ref_err[k] > 0) for k in FIT_PARAMETERS], axis=0)
    print(f"\nTime per galaxy (wall clock after a warm-up, one process, {threads} threads) and agreement with "
          f"the reference: |method - GalSim + scipy| / the reference's error, median / 90th percentile over "
          f"the stamps both converged ({int(ref_ok.sum())} of {n} reference fits converged with finite errors):\n")
    header = "| method | ms / galaxy | × galcae's time | converged | both | " + " | ".join(
        SHORT[k] for k in FIT_PARAMETERS) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for label, (values, converged, seconds) in results.items():
        per = seconds / n
        both = ref_ok & converged & np.all([np.isfinite(values[k]) for k in FIT_PARAMETERS], axis=0)
        cells = []
        for k in FIT_PARAMETERS:
            if "reference" in label or not both.any():
                cells.append("-")
                continue
            d = np.abs(values[k][both] - ref[k][both]) / ref_err[k][both]
            cells.append(f"{np.median(d):.2f} / {np.percentile(d, 90):.2f}")
        print(f"| {label} | {1e3 * per:.1f} | {per / base:.2f} | {int(converged.sum())} / {n} | {int(both.sum())} | "
              + " | ".join(cells) + " |")
    for label, why in missing.items():
        print(f"| {label} | {why} | | | | " + " | ".join("" for _ in FIT_PARAMETERS) + " |")
    for label, note in notes.items():
        print(f"\nnote ({label}): {note}")
    print("\n× galcae's time: the method's time per galaxy over galcae fit_batch's through the Moffat; "
          "converged: each method's own test (AstroPhot BatchLM: per stamp, chi² falling by less than 10x its "
          "relative tolerance at the last step).")


if __name__ == "__main__":
    main()
