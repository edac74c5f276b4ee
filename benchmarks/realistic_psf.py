"""The `survey` model's catalog on realistic galaxies seen through PSFs that are not Moffats.

How honest `galcae infer`'s catalog is there: bias, scatter and error-bar coverage, run three ways.

    python benchmarks/realistic_psf.py                          # 3,000 galaxies, 2 workers
    python benchmarks/realistic_psf.py --n 600 --workers 2 --save rp.parquet
    python benchmarks/realistic_psf.py --from rp.parquet        # the tables again, no rerun
    python benchmarks/realistic_psf.py --check-truth            # bulge + disk r½ definition check
    python benchmarks/realistic_psf.py --model runs/mine        # another model than the shipped `survey`

What is simulated (with GalSim here, not with galcae.simulate, so that the data are drawn by
other code than the training simulator), in the survey model's setup (`configs/survey.yaml`):
64 x 64 stamps of 0.2"/pixel, sky-subtracted, CCD noise (Poisson on galaxy + sky in electrons,
gain 1, read noise 5 e-) on a sky drawn log-uniformly in 100-2000 ADU/pixel; the galaxy's centre
uniform within ±2 pixels of the stamp's centre (x = y = 32 in galcae's convention); total flux
log-uniform in 1e3-3e5 ADU.

- Galaxies: single Sérsics with (n, r½, |g|) resampled jointly from the rows of 276 COSMOS
  fits (`galcae/data/cosmos_sersic_fits.asc`), rows outside the model's training range
  (n 0.5-5, r½ 0.15-3") left out of the draw (11 rows, all with r½ < 0.15"); |g| is kept as
  COSMOS has it (8% of rows above the training set's 0.6); position angle uniform.
  A `--bulge-fraction-of-sample` of them are bulge + disk instead: an exponential disk with
  r½ and |g| from a COSMOS row, a de Vaucouleurs bulge (n = 4) of 0.2-0.6 times the disk's r½,
  |g| 0-0.2, its position angle within ±30° of the disk's, bulge-to-total 0.1-0.6.
- PSFs, one per stamp, three families in equal shares: `kolmogorov+optics` (a Kolmogorov
  convolved with an obscured OpticalPSF of λ/D 0.05-0.1", defocus, astigmatism and coma each
  within ±0.3 waves, shifted so that its centroid, which coma moves by up to a pixel, is the
  origin, as a PSF model's is; the Kolmogorov's FWHM solved for so that the total is 0.5-1.1"),
  `elliptical` (a Kolmogorov or a Moffat of β 2.5-5, FWHM 0.5-1.1", sheared by |e| <= 0.1) and
  `moffat-beta` (a Moffat of FWHM 0.5-1.1" and β 2-6: outside the training set's 2.5-5 at both
  ends). The PSF image given to galcae is the profile drawn `--psf-size` pixels square at
  0.2"/pixel with the pixel's response, normalised to unit sum (a star, cut out); the galaxy is
  drawn through the untruncated profile.

Truths: `flux` the profile's total flux (not the flux inside the stamp); `half_light_radius`
the circularised half-light radius sqrt(A/π), A the area of the smallest region holding half
the light of the intrinsic (pre-PSF) profile: a single Sérsic's own `half_light_radius`
(GalSim's shear preserves area), for a bulge + disk measured by drawing the profile without
the pixel on a grid holding > 99.9% of its light, at 0.04"/pixel or finer for small galaxies,
sorting the pixels and cumulating from the faintest to half the total flux (from the
brightest, the point-sampled core of an n = 4 bulge holds far too much light);
`--check-truth` compares that measurement with single Sérsics' known radii (to 0.3%);
`sersic_n`, `g1` = |g| cos 2θ, `g2` = |g| sin 2θ (GalSim's reduced shear, θ the position angle
from +x, galcae's convention) for single Sérsics only. The S/N of the binning is galcae's
matched-filter S/N of the noiseless stamp (`galcae.physics.optimal_snr`); bins 10-30, 30-100
and > 100 (fainter galaxies are not scored).

The runs, each through `galcae.catalog.infer.infer_catalog` exactly as `galcae infer` runs
(stamps in one FITS cube, timed):
  1. `no-refine`            --no-refine, --psf the cube of PSF images (the CAE's conditions
                            are the Moffat galcae fits to each image);
  2. `default, PSF image`   the CLI's default refinement (the model card's S/N threshold),
                            --psf the PSF images: the classical fit convolves with them;
  3. `default, Moffat fit`  the default refinement, no PSF images: --conditions a table of the
                            Moffat (psf_fwhm, psf_beta) fitted to each PSF image, what a user
                            with only a Moffat fit to a star gives.
A fourth run, `no-refine, Moffat table`, is only timed: what run 3 costs without refinement
(runs 1 and 2 pay for galcae's Moffat fit to every PSF image, run 3 does not).

Tables per run: per galaxy kind and S/N bin, for flux and r½ (and n, g1, g2 for single Sérsics)
N, unmeasured (NaN) rows, bias (median of (est - true) / true in % for flux and r½, of
est - true otherwise), robust scatter (1.4826 MAD of the same), 68% coverage (|est - true| <=
`_err`) and 95% coverage (`_lo95` <= true <= `_hi95`); flux and r½ per PSF family; flag rates.
Targets, judged on `default, PSF image` at S/N >= 30: |flux bias| <= 1% and |r½ bias| <= 2%
(single Sérsic); 68% and 95% coverage within ±5 points of 68 and 95 (every parameter, both kinds).
"""

import argparse
import json
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import galsim
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.io import fits
from scipy.optimize import brentq
from scipy.special import gammaincc

from galcae.card import MODEL_DEFAULT, model_paths, read_card, resolve_model
from galcae.catalog.infer import InferOptions, infer_catalog
from galcae.physics import moffat_parameters, optimal_snr, pixel_variance

STAMP, SCALE, GAIN, READ_NOISE = 64, 0.2, 1.0, 5.0
SKY, FLUX, FWHM = (100.0, 2000.0), (1e3, 3e5), (0.5, 1.1)
N_RANGE, R_RANGE = (0.5, 5.0), (0.15, 3.0)  # the model's training range
COSMOS = Path(__file__).resolve().parents[1] / "galcae" / "data" / "cosmos_sersic_fits.asc"
FAMILIES = ("kolmogorov+optics", "elliptical", "moffat-beta")
KINDS = {"sersic": "single Sérsic", "bulge+disk": "bulge + disk"}
SNR_BINS = {"10-30": (10, 30), "30-100": (30, 100), ">100": (100, np.inf)}
PARAMETERS = ("flux", "half_light_radius", "sersic_n", "g1", "g2")
RELATIVE = ("flux", "half_light_radius")  # biases and scatters as fractions of the truth
SHORT = {"flux": "flux", "half_light_radius": "r½", "sersic_n": "n", "g1": "g1", "g2": "g2"}
RUNS = {"no_refine": "no-refine", "psf_image": "default, PSF image", "moffat_fit": "default, Moffat fit"}
#: Timed only: the CAE alone from the Moffat table, the baseline of `default, Moffat fit` (the
#: no-refine run also fits a Moffat to every PSF image, which the Moffat-table runs do not).
TIMING_RUNS = {"no_refine_table": "no-refine, Moffat table"}
BASELINE = {"psf_image": "no_refine", "moffat_fit": "no_refine_table"}
JUDGED = "psf_image"
BIAS_TARGET = {"flux": 1.0, "half_light_radius": 2.0}  # |bias| in %, single Sérsic, S/N >= 30
COVERAGE_SLACK = 5.0  # points
FFT_CAP = 8192  # GalSim's maximum_fft_size, as galcae's simulations


# --- the galaxies and PSFs drawn ----------------------------------------------------------------


def cosmos_rows() -> np.ndarray:
    """(n, r½, |g|) of the COSMOS fits inside the model's training range of n and r½."""
    table = np.loadtxt(COSMOS)
    n, r, g = table[:, 1], table[:, 2], table[:, 3]
    keep = (n >= N_RANGE[0]) & (n <= N_RANGE[1]) & (r >= R_RANGE[0]) & (r <= R_RANGE[1])
    return np.stack([n, r, g], axis=1)[keep]


def log_uniform(rng, bounds, size) -> np.ndarray:
    return np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]), size))


def draw_parameters(n: int, seed: int, bulge_fraction: float) -> pd.DataFrame:
    """Every galaxy's and PSF's parameters (one row each); the noise is seeded per row."""
    rng = np.random.default_rng(seed)
    rows = cosmos_rows()
    picked = rows[rng.integers(len(rows), size=n)]
    bulgy = rng.permutation(n) < round(bulge_fraction * n)
    p = pd.DataFrame({
        "kind": np.where(bulgy, "bulge+disk", "sersic"),
        "family": np.array(FAMILIES)[rng.permutation(n) % len(FAMILIES)],
        "flux": log_uniform(rng, FLUX, n),
        "x": STAMP / 2 + rng.uniform(-2, 2, n), "y": STAMP / 2 + rng.uniform(-2, 2, n),
        "sky_level": log_uniform(rng, SKY, n),
        "noise_seed": rng.integers(1, 2**31 - 1, n),
        # the single Sérsic, or the bulge + disk's disk (n = 1)
        "gal_n": np.where(bulgy, 1.0, picked[:, 0]), "gal_r": picked[:, 1], "gal_g": picked[:, 2],
        "gal_pa": rng.uniform(0, 180, n),
        "bulge_to_total": np.where(bulgy, rng.uniform(0.1, 0.6, n), 0.0),
        "bulge_r": picked[:, 1] * rng.uniform(0.2, 0.6, n), "bulge_g": rng.uniform(0, 0.2, n),
        "bulge_dpa": rng.uniform(-30, 30, n),
        # the PSF: its FWHM, the elliptical family's profile and shear, β, the optics
        "psf_target_fwhm": rng.uniform(*FWHM, n),
        "psf_kolmogorov": rng.uniform(size=n) < 0.5,  # of the elliptical family
        "psf_moffat_beta": rng.uniform(2.5, 5.0, n), "psf_wide_beta": rng.uniform(2.0, 6.0, n),
        "psf_lam_over_diam": rng.uniform(0.05, 0.1, n),
        **{f"psf_{a}": rng.uniform(-0.3, 0.3, n) for a in ("defocus", "astig1", "astig2", "coma1", "coma2")},
        "psf_e": rng.uniform(0, 0.1, n), "psf_e_angle": rng.uniform(0, np.pi, n),
    })
    single = ~bulgy
    two_theta = np.deg2rad(2 * p["gal_pa"])
    p["true_flux"] = p["flux"]
    p["true_half_light_radius"] = np.where(single, p["gal_r"], np.nan)  # bulge + disk: measured later
    p["true_sersic_n"] = np.where(single, p["gal_n"], np.nan)
    p["true_g1"] = np.where(single, p["gal_g"] * np.cos(two_theta), np.nan)
    p["true_g2"] = np.where(single, p["gal_g"] * np.sin(two_theta), np.nan)
    return p


def components(row: dict) -> list[tuple[float, float, float, float, float]]:
    """``(flux, n, r½, |g|, position angle deg)`` of each Sérsic component of a galaxy."""
    if row["kind"] == "sersic":
        return [(row["flux"], row["gal_n"], row["gal_r"], row["gal_g"], row["gal_pa"])]
    bulge = row["flux"] * row["bulge_to_total"]
    return [(row["flux"] - bulge, 1.0, row["gal_r"], row["gal_g"], row["gal_pa"]),
            (bulge, 4.0, row["bulge_r"], row["bulge_g"], row["gal_pa"] + row["bulge_dpa"])]


def galaxy_profile(parts, gsparams=None) -> galsim.GSObject:
    return galsim.Add([galsim.Sersic(n=n, half_light_radius=r, flux=f, gsparams=gsparams)
                       .shear(g=g, beta=pa * galsim.degrees) for f, n, r, g, pa in parts])


def profile_fwhm(psf: galsim.GSObject) -> float:
    """The FWHM (arcsec) of a PSF profile without the pixel: the diameter of the circle of the
    area above half the peak (the FWHM of a round profile; robust to a coma's asymmetry)."""
    image = psf.drawImage(nx=256, ny=256, scale=0.01, method="no_pixel").array
    return float(2 * np.sqrt(np.count_nonzero(image >= 0.5 * image.max()) / np.pi) * 0.01)


def psf_profile(row: dict) -> galsim.GSObject:
    """The stamp's PSF, of its family (:data:`FAMILIES`)."""
    fwhm = row["psf_target_fwhm"]
    if row["family"] == "moffat-beta":
        return galsim.Moffat(beta=row["psf_wide_beta"], fwhm=fwhm)
    if row["family"] == "elliptical":
        base = galsim.Kolmogorov(fwhm=fwhm) if row["psf_kolmogorov"] else \
            galsim.Moffat(beta=row["psf_moffat_beta"], fwhm=fwhm)
        e, angle = row["psf_e"], 2 * row["psf_e_angle"]
        return base.shear(e1=e * np.cos(angle), e2=e * np.sin(angle))
    optics = galsim.OpticalPSF(lam_over_diam=row["psf_lam_over_diam"], obscuration=0.3,
                               **{a: row[f"psf_{a}"] for a in ("defocus", "astig1", "astig2", "coma1", "coma2")})
    optics = optics.shift(-optics.centroid)  # coma moves the light by up to a pixel: PSFs are centred
    return galsim.Convolve(galsim.Kolmogorov(fwhm=seeing_for(fwhm, optics)), optics)


def seeing_for(target: float, optics: galsim.GSObject) -> float:
    """The Kolmogorov FWHM that makes its convolution with ``optics`` ``target`` wide (to 1%,
    by secant steps; 0.02" if the optics alone are as wide)."""
    def excess(seeing):
        return profile_fwhm(galsim.Convolve(galsim.Kolmogorov(fwhm=seeing), optics)) - target

    a = np.sqrt(max(target**2 - profile_fwhm(optics) ** 2, (0.2 * target) ** 2))
    fa = excess(a)
    b = float(np.clip(a - fa, 0.02, target))
    for _ in range(6):
        fb = excess(b)
        if abs(fb) < 0.01 * target or fb == fa:
            break
        a, fa, b = b, fb, float(np.clip(b - fb * (b - a) / (fb - fa), 0.02, target))
    return b


# --- the truth of a bulge + disk's half-light radius -------------------------------------------


def enclosing_radius(parts, fraction: float) -> float:
    """A radius (arcsec) whose circle holds at least ``fraction`` of the light: each component
    of circularised r½ and axis ratio q holds P(2n, b (r sqrt(q) / r½)^(1/n)) inside its
    isophote of major semi-axis r, which the circle of radius r contains."""
    total = sum(f for f, *_ in parts)

    def outside(radius):
        lost = 0.0
        for f, n, r_half, g, _ in parts:
            b = galsim.Sersic(n=n, half_light_radius=1.0).scale_radius ** (-1.0 / n)
            q = (1 - g) / (1 + g)
            lost += f * gammaincc(2 * n, b * (radius * np.sqrt(q) / r_half) ** (1.0 / n))
        return lost / total - (1 - fraction)

    return brentq(outside, 1e-3, 1e4)


def measured_half_light_radius(parts, fraction: float = 0.999, max_side: int = 4096) -> float:
    """sqrt(A/π), A the area of the smallest region holding half the light of the intrinsic
    profile: drawn without the pixel on a grid holding ``fraction`` of the light, at 0.04"
    per pixel or an eighth of the smallest component's minor-axis r½ if finer (a cap of
    ``max_side`` pixels coarsens it); the pixels sorted by brightness and cumulated from the
    faintest until they hold half the profile's total flux, the rest being the region. (From
    the faint end: a pixel's sample is no measure of its light at a steep core, whose
    surface brightness varies within the pixel, an n = 4 bulge's at any scale.)"""
    smallest = min(r * np.sqrt((1 - g) / (1 + g)) for _, _, r, g, _ in parts)
    half_width = enclosing_radius(parts, fraction)
    scale = max(min(SCALE / 5, smallest / 8), 2 * half_width / max_side)
    side = 2 * int(np.ceil(half_width / scale)) + 1
    image = galaxy_profile(parts).drawImage(nx=side, ny=side, scale=scale, method="no_pixel").array
    faint_first = np.cumsum(np.sort(image.ravel()))
    outside = np.searchsorted(faint_first, 0.5 * sum(f for f, *_ in parts))
    return float(np.sqrt((image.size - outside) * scale**2 / np.pi))


def check_truth() -> None:
    """The bulge + disk r½ measurement on single Sérsics of known r½ (to < 1%)."""
    print("half-light radius measured on the intrinsic profile vs single Sérsics' own:")
    print(f"{'n':>5}{'r½ (arcsec)':>13}{'|g|':>6}{'measured':>10}{'error':>9}")
    worst = 0.0
    for n in (0.5, 1.0, 2.0, 4.0, 5.0):
        for r in (0.15, 0.4, 1.0, 3.0):
            for g in (0.0, 0.3, 0.7):
                measured = measured_half_light_radius([(1.0, n, r, g, 30.0)])
                error = measured / r - 1
                worst = max(worst, abs(error))
                print(f"{n:>5g}{r:>13g}{g:>6g}{measured:>10.4f}{100 * error:>8.2f}%")
    print(f"largest error {100 * worst:.2f}% ({'< 1%: met' if worst < 0.01 else 'NOT < 1%'})")


# --- rendering ----------------------------------------------------------------------------------


def render(row: dict, psf_size: int) -> dict:
    """One galaxy: its noisy stamp, PSF image, truths that need a drawing, S/N and the Moffat
    fitted to its PSF image (NaN stamp and a status where GalSim fails)."""
    out = {"status": "ok", "stamp": np.full((STAMP, STAMP), np.nan, np.float32), "snr": np.nan,
           "psf_fwhm": np.nan, "psf_inside": np.nan, "moffat_fwhm": np.nan, "moffat_beta": np.nan,
           "moffat_seconds": np.nan,
           "psf_image": np.zeros((psf_size, psf_size)), "true_half_light_radius": row["true_half_light_radius"]}
    gsparams = galsim.GSParams(maximum_fft_size=FFT_CAP)
    try:
        psf = psf_profile(row)
        out["psf_fwhm"] = profile_fwhm(psf)
        image = psf.drawImage(nx=psf_size, ny=psf_size, scale=SCALE).array
        out["psf_inside"] = float(image.sum())  # of the PSF's light, inside the image
        out["psf_image"] = image / image.sum()
        start = time.perf_counter()
        out["moffat_fwhm"], out["moffat_beta"] = moffat_parameters(out["psf_image"], SCALE)
        out["moffat_seconds"] = time.perf_counter() - start
        parts = components(row)
        if row["kind"] != "sersic":
            out["true_half_light_radius"] = measured_half_light_radius(parts)
        galaxy = galsim.Convolve(galaxy_profile(parts, gsparams), psf, gsparams=gsparams)
        noiseless = galaxy.drawImage(nx=STAMP, ny=STAMP, scale=SCALE,
                                     offset=(row["x"] - STAMP / 2, row["y"] - STAMP / 2))
    except (galsim.GalSimError, MemoryError) as err:
        out["status"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
        return out
    out["snr"] = optimal_snr(noiseless.array, pixel_variance(noiseless.array, row["sky_level"], GAIN, READ_NOISE))
    noiseless.addNoise(galsim.CCDNoise(galsim.BaseDeviate(int(row["noise_seed"])), sky_level=row["sky_level"],
                                       gain=GAIN, read_noise=READ_NOISE))
    out["stamp"] = noiseless.array.astype(np.float32)
    return out


def _render_star(args) -> dict:
    return render(*args)


#: What :func:`render` gives besides the stamp and PSF image: truth-table columns.
RENDERED = ("status", "snr", "psf_fwhm", "psf_inside", "moffat_fwhm", "moffat_beta", "moffat_seconds",
            "true_half_light_radius")


def simulate(params: pd.DataFrame, psf_size: int, workers: int, render_star=_render_star, rendered=RENDERED):
    """Render every row (``render_star((row, psf_size))``, :func:`render` by default) on
    ``workers`` processes: (truth table with the ``rendered`` columns, stamps, PSF images)."""
    jobs = [(row, psf_size) for row in params.to_dict("records")]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            done = list(pool.map(render_star, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
    else:
        done = [render_star(job) for job in jobs]
    truth = params.copy()
    for key in rendered:
        truth[key] = [d[key] for d in done]
    return truth, np.stack([d["stamp"] for d in done]), np.stack([d["psf_image"] for d in done])


# --- the catalog runs ---------------------------------------------------------------------------


def write_inputs(work: Path, stamps: np.ndarray, psfs: np.ndarray, truth: pd.DataFrame) -> dict:
    """The stamps' cube, the PSF images' cube and the Moffat conditions table."""
    paths = {"stamps": work / "stamps.fits", "psf": work / "psf.fits", "conditions": work / "conditions.csv"}
    fits.PrimaryHDU(stamps.astype(np.float32)).writeto(paths["stamps"], overwrite=True)
    fits.PrimaryHDU(psfs).writeto(paths["psf"], overwrite=True)
    pd.DataFrame({"psf_fwhm": truth["moffat_fwhm"], "psf_beta": truth["moffat_beta"]}).to_csv(
        paths["conditions"], index=False, float_format="%.9g")
    return paths


def run_catalogs(paths: dict, work: Path, workers: int, chunk_size: int | None, model: str = "survey"
                 ) -> tuple[dict, dict, dict]:
    """The three runs: ({run: catalog DataFrame}, {run: seconds}, {run: traceback} of failed ones)."""
    model = resolve_model(model)
    setups = {"no_refine": (InferOptions(refine_snr=None), {"psf": paths["psf"]}),
              "psf_image": (InferOptions(refine_snr=MODEL_DEFAULT), {"psf": paths["psf"]}),
              "moffat_fit": (InferOptions(refine_snr=MODEL_DEFAULT), {"conditions": paths["conditions"]}),
              "no_refine_table": (InferOptions(refine_snr=None), {"conditions": paths["conditions"]})}
    catalogs, seconds, failed = {}, {}, {}
    for key, (options, given) in setups.items():
        out = work / f"{key}.parquet"
        inputs = ", ".join(f"{k}={v.name}" for k, v in given.items())
        print(f"run {({**RUNS, **TIMING_RUNS})[key]!r}: infer_catalog({model.name!r}, {paths['stamps'].name}, "
              f"workers={workers}, {inputs}, refine_snr={options.refine_snr!r})", flush=True)
        start = time.perf_counter()
        try:
            infer_catalog(model, [str(paths["stamps"])], out, workers=workers, chunk_size=chunk_size,
                          options=options, overwrite=True, echo=lambda line: print("   ", line, flush=True),
                          **{k: str(v) for k, v in given.items()})
        except Exception:  # noqa: BLE001 - a failed run is reported, the others still scored
            failed[key] = traceback.format_exc()
            print(failed[key], flush=True)
            continue
        finally:
            seconds[key] = time.perf_counter() - start
        if key in RUNS:
            catalogs[key] = pd.read_parquet(out)
        print(f"    {seconds[key]:.1f} s", flush=True)
    return catalogs, seconds, failed


def merged(truth: pd.DataFrame, catalogs: dict) -> pd.DataFrame:
    """The truth table with each run's catalog columns as ``run.column``."""
    table = truth.reset_index(drop=True)
    for key, catalog in catalogs.items():
        keep = [c for c in catalog.columns if c not in ("id", "source", "index")]
        table = pd.concat([table, catalog[keep].reset_index(drop=True).add_prefix(f"{key}.")], axis=1)
    return table


def save(path: Path, results: pd.DataFrame, meta: dict) -> None:
    table = pa.Table.from_pandas(results, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"realistic_psf": json.dumps(meta).encode()})
    pq.write_table(table, path)


def load(path: Path) -> tuple[pd.DataFrame, dict]:
    table = pq.read_table(path)
    return table.to_pandas(), json.loads(table.schema.metadata[b"realistic_psf"])


# --- the tables ---------------------------------------------------------------------------------


def snr_bin(snr: np.ndarray) -> np.ndarray:
    labels = np.full(len(snr), "", dtype=object)
    for label, (lo, hi) in SNR_BINS.items():
        labels[(snr >= lo) & (snr < hi)] = label
    return labels


def statistics(results: pd.DataFrame, run: str, name: str) -> dict:
    """N, unmeasured, bias, robust scatter and coverages of ``name`` in ``run`` over these rows."""
    true = results[f"true_{name}"].to_numpy(float)
    est = results[f"{run}.{name}"].to_numpy(float)
    measured = np.isfinite(est)
    true, est = true[measured], est[measured]
    err = results[f"{run}.{name}_err"].to_numpy(float)[measured]
    lo, hi = (results[f"{run}.{name}_{end}"].to_numpy(float)[measured] for end in ("lo95", "hi95"))
    stats = {"n": int(measured.sum()), "unmeasured": int((~measured).sum())}
    if not stats["n"]:
        return stats
    delta = (est - true) / true * 100 if name in RELATIVE else est - true
    median = np.median(delta)
    stats.update(bias=median, scatter=1.4826 * np.median(np.abs(delta - median)),
                 cov68=100 * np.mean(np.abs(est - true) <= err), cov95=100 * np.mean((lo <= true) & (true <= hi)))
    return stats


def verdict(stats: dict, name: str, kind: str | None) -> str:
    """Against the targets (only asked of the judged run at S/N >= 30)."""
    if not stats.get("n"):
        return ""
    missed = []
    if kind == "sersic" and name in BIAS_TARGET and abs(stats["bias"]) > BIAS_TARGET[name]:
        missed.append(f"bias > {BIAS_TARGET[name]:g}%")
    for level in (68, 95):
        if abs(stats[f"cov{level}"] - level) > COVERAGE_SLACK:
            missed.append(f"{level}% {'low' if stats[f'cov{level}'] < level else 'high'}")
    return "met" if not missed else "NOT met: " + ", ".join(missed)


def stats_row(label: str, snr_label: str, stats: dict, relative: bool, judged: str) -> str:
    if not stats.get("n"):
        return f"  {label:<6}{snr_label:>8}{0:>7}{stats.get('unmeasured', 0):>8}"
    if relative:
        bias, scatter = f"{stats['bias']:+.2f}%", f"{stats['scatter']:.2f}%"
    else:
        bias, scatter = f"{stats['bias']:+.3f}", f"{stats['scatter']:.3f}"
    return (f"  {label:<6}{snr_label:>8}{stats['n']:>7}{stats['unmeasured']:>8}{bias:>10}{scatter:>10}"
            f"{stats['cov68']:>7.1f}{stats['cov95']:>7.1f}   {judged}").rstrip()


HEADER = f"  {'param':<6}{'S/N':>8}{'N':>7}{'unmeas':>8}{'bias':>10}{'scatter':>10}{'68%':>7}{'95%':>7}"


def kind_tables(results: pd.DataFrame, run: str) -> None:
    """Per galaxy kind, parameter and S/N bin; the judged run's verdicts at S/N >= 30."""
    bins = snr_bin(results["snr"].to_numpy(float))
    verdicts = []
    for kind, kind_label in KINDS.items():
        names = PARAMETERS if kind == "sersic" else RELATIVE
        print(f"{RUNS[run]} - {kind_label}" + ("   (targets at S/N >= 30 judged)" if run == JUDGED else ""))
        print(HEADER + ("   verdict" if run == JUDGED else ""))
        for name in names:
            for label in SNR_BINS:
                rows = results[(results["kind"] == kind) & (bins == label)]
                stats = statistics(rows, run, name)
                judged = verdict(stats, name, kind) if run == JUDGED and label != "10-30" else ""
                verdicts += [judged] if judged else []
                print(stats_row(SHORT[name], label, stats, name in RELATIVE, judged))
        print()
    if verdicts:
        print(f"Targets of {RUNS[run]!r} at S/N >= 30: met in {verdicts.count('met')} of {len(verdicts)} "
              "(kind, parameter, S/N bin) rows\n")


def family_table(results: pd.DataFrame, run: str) -> None:
    bins = snr_bin(results["snr"].to_numpy(float))
    print(f"{RUNS[run]} - by PSF family (both kinds)")
    for family in FAMILIES:
        print(f" {family}")
        print(HEADER)
        for name in RELATIVE:
            for label in SNR_BINS:
                rows = results[(results["family"] == family) & (bins == label)]
                print(stats_row(SHORT[name], label, statistics(rows, run, name), True, ""))
    print()


def flag_table(results: pd.DataFrame, run: str) -> None:
    """Each flag's rate over all rows; refined and poor-fit rates per kind and S/N bin."""
    flags = [c for c in results.columns if c.startswith(f"{run}.flag_")]
    rates = ", ".join(f"{c.split('.', 1)[1][5:]} {100 * results[c].mean():.1f}%" for c in flags)
    if f"{run}.refined" in results.columns:
        rates += f"; refined {100 * results[f'{run}.refined'].mean():.1f}%"
    print(f"{RUNS[run]} - flags over all {len(results)} rows: {rates or 'no flag columns'}")
    per_bin = [c for c in (f"{run}.refined", f"{run}.flag_poor_fit") if c in results.columns]
    if f"{run}.flag_poor_fit" not in results.columns:
        print("  (no flag_poor_fit column in this catalog)")
    if not per_bin:
        return
    chi2 = f"{run}.chi2_dof"
    bins = snr_bin(results["snr"].to_numpy(float))
    print(f"  {'kind':<15}{'S/N':>8}{'N':>7}" + "".join(f"{c.split('.', 1)[1]:>15}" for c in per_bin)
          + (f"{'median chi2_dof':>17}" if chi2 in results.columns else ""))
    for kind, kind_label in KINDS.items():
        for label in SNR_BINS:
            rows = results[(results["kind"] == kind) & (bins == label)]
            cells = "".join(f"{100 * rows[c].mean() if len(rows) else np.nan:>14.1f}%" for c in per_bin)
            if chi2 in results.columns:
                cells += f"{np.nanmedian(rows[chi2]) if rows[chi2].notna().any() else np.nan:>17.2f}"
            print(f"  {kind_label:<15}{label:>8}{len(rows):>7}{cells}")
    print()


def timing_table(results: pd.DataFrame, meta: dict) -> None:
    """Each run's wall time and refined stamps; the PSF-image run against the Moffat one."""
    seconds, failed = meta["seconds"], meta.get("failed", {})
    refined = "no refinement" if meta["refine_snr"] is None else f"refinement above S/N {meta['refine_snr']:g}"
    print(f"Wall time ({meta['workers']} worker(s), {len(results)} stamps, {refined}; galcae fits a Moffat "
          f"to each PSF image given, {1e3 * meta['moffat_seconds']:.0f} ms on a core):")
    print(f"  {'run':<24}{'seconds':>9}{'refined':>9}{'s / refined':>13}{'over baseline':>15}")
    added = {}
    for key, label in {**RUNS, **TIMING_RUNS}.items():
        if key not in seconds:
            continue
        if key in failed:
            print(f"  {label:<24}   failed after {seconds[key]:.1f} s")
            continue
        refined = int(results[f"{key}.refined"].sum()) if f"{key}.refined" in results.columns else 0
        base = BASELINE.get(key)
        if base in seconds and base not in failed:
            added[key] = seconds[key] - seconds[base]
        per = f"{seconds[key] / refined:.3f}" if refined else "-"
        extra = f"{added[key] / refined:.3f}" if refined and key in added else "-"
        print(f"  {label:<24}{seconds[key]:>9.1f}{refined:>9}{per:>13}{extra:>15}"
              + (f"   (baseline: {({**RUNS, **TIMING_RUNS})[base]})" if base else ""))
    if "psf_image" in seconds and "moffat_fit" in seconds and not {"psf_image", "moffat_fit"} & set(failed):
        image, moffat = seconds["psf_image"], seconds["moffat_fit"]
        line = f"  PSF image vs Moffat fit: {image:.1f} s vs {moffat:.1f} s, ratio {image / moffat:.2f}"
        if {"psf_image", "moffat_fit"} <= set(added) and added["moffat_fit"] > 0:
            line += (f"; refinement alone (over baseline) {added['psf_image']:.1f} s vs "
                     f"{added['moffat_fit']:.1f} s, ratio {added['psf_image'] / added['moffat_fit']:.2f}")
        print(line)
    print("  (s / refined: the run's wall time per refined stamp; over baseline: the time the refinement adds "
          "to the same run without it, per refined stamp)")


def simulation_summary(results: pd.DataFrame) -> None:
    bins = snr_bin(results["snr"].to_numpy(float))
    print(f"{len(results)} galaxies; per kind and S/N bin (S/N < 10 not scored):")
    print(f"  {'kind':<15}" + "".join(f"{b:>9}" for b in ("<10", *SNR_BINS)))
    for kind, label in KINDS.items():
        counts = [int(((results["kind"] == kind) & (bins == b)).sum()) for b in ("", *SNR_BINS)]
        print(f"  {label:<15}" + "".join(f"{c:>9}" for c in counts))
    print("  PSF FWHM achieved (GalSim's, no pixel) and the Moffat galcae fits to the images:")
    for family in FAMILIES:
        rows = results[results["family"] == family]
        print(f"    {family:<18} FWHM {rows['psf_fwhm'].min():.3f}-{rows['psf_fwhm'].max():.3f}\"; Moffat fit "
              f"FWHM {rows['moffat_fwhm'].min():.3f}-{rows['moffat_fwhm'].max():.3f}\", "
              f"β {rows['moffat_beta'].min():.2f}-{rows['moffat_beta'].max():.2f}"
              + (f"; light inside the PSF image {100 * rows['psf_inside'].median():.2f}% (median)"
                 if "psf_inside" in rows else ""))
    print()


def report(results: pd.DataFrame, meta: dict) -> None:
    simulation_summary(results)
    for key, trace in meta.get("failed", {}).items():
        print(f"run {RUNS[key]!r} FAILED:\n{trace}")
    for run in RUNS:
        if f"{run}.flux" not in results.columns:
            continue
        print("=" * 100)
        kind_tables(results, run)
        family_table(results, run)
        flag_table(results, run)
    timing_table(results, meta)


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="galaxies simulated")
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--model", default="survey", help="the model measured: a shipped name or a run directory")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering, and galcae's workers")
    parser.add_argument("--bulge-fraction-of-sample", type=float, default=0.5,
                        help="share of bulge + disk galaxies (the rest single Sérsics)")
    parser.add_argument("--psf-size", type=int, default=63,
                        help="PSF image size in pixels (odd; as large as a stamp allows, as docs/guide-infer advises)")
    parser.add_argument("--fit-floors", action="store_true",
                        help="also print the model-error floors that give the refined rows 68%% coverage")
    parser.add_argument("--chunk-size", type=int, default=None, help="galcae's stamps per chunk [galcae's default]")
    parser.add_argument("--keep", type=Path, default=None, help="write the stamps, PSFs and catalogs here")
    parser.add_argument("--save", type=Path, default=None, help="per-galaxy truths and estimates (.parquet)")
    parser.add_argument("--from", dest="source", type=Path, default=None,
                        help="only print the tables of a --save file")
    parser.add_argument("--check-truth", action="store_true", help="check the r½ truth's definition and exit")
    args = parser.parse_args()
    if args.check_truth:
        check_truth()
        return
    if args.source:
        report(*load(args.source))
        if args.fit_floors:
            floors_report(load(args.source)[0])
        return
    if args.psf_size % 2 == 0 or args.psf_size > STAMP:
        parser.error("--psf-size must be odd and at most 64")

    start = time.perf_counter()
    truth, stamps, psfs = simulate(draw_parameters(args.n, args.seed, args.bulge_fraction_of_sample),
                                   args.psf_size, args.workers)
    ok = (truth["status"] == "ok").to_numpy()
    print(f"Rendered {ok.sum()} of {args.n} galaxies in {time.perf_counter() - start:.1f} s"
          + ("" if ok.all() else f"; dropped {int((~ok).sum())} GalSim failed: "
             + "; ".join(sorted(set(truth['status'][~ok])))[:300]), flush=True)
    truth, stamps, psfs = truth[ok].reset_index(drop=True), stamps[ok], psfs[ok]

    with tempfile.TemporaryDirectory(prefix="galcae-realistic-psf-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        catalogs, seconds, failed = run_catalogs(write_inputs(work, stamps, psfs, truth), work, args.workers,
                                                 args.chunk_size, args.model)
    meta = {"seconds": seconds, "failed": failed, "workers": args.workers, "seed": args.seed,
            "moffat_seconds": float(truth["moffat_seconds"].mean()),
            "model": args.model,
            "refine_snr": read_card(model_paths(resolve_model(args.model))[1]).refine_snr_for(MODEL_DEFAULT)}
    results = merged(truth, catalogs)
    if args.save:
        save(args.save, results, meta)
        print(f"saved {args.save}")
    print()
    report(results, meta)
    if args.fit_floors:
        floors_report(results, args.model)


# --- the model-error floors ---------------------------------------------------------------------


def floor_for_coverage(miss: np.ndarray, err: np.ndarray, scale, target: float = 0.68) -> float:
    """The floor ``f`` for which ``miss <= hypot(err, f * scale)`` holds for ``target`` of the rows."""
    def covered(f: float) -> float:
        return np.mean(miss <= np.hypot(err, f * scale)) - target

    return 0.0 if covered(0.0) >= 0 else float(brentq(covered, 0.0, 10.0))


def floors_report(results: pd.DataFrame, model: str = "survey") -> None:
    """The floors (galcae.estimate.refine's model error) that give the `default, PSF image`
    run's refined rows at S/N >= 30 68% coverage, from their errors without the model card's
    floors: for flux and r½ on the bulge + disk galaxies (real galaxies are not single
    Sérsics; single Sérsics are then over-covered at high S/N, the tables show by how much),
    for n, g1 and g2 on the single Sérsics (the only ones with a true n and g)."""
    from galcae.estimate.refine import RELATIVE_FLOOR

    card_floors = read_card(model_paths(resolve_model(model))[1]).refinement.model_error
    rows = results[(results[f"{JUDGED}.refined"] == True) & (results["snr"] >= 30)]  # noqa: E712
    floors = {}
    print("\nModel-error floors for 68% coverage of the refined rows at S/N >= 30, flux and r½ on "
          "bulge + disk galaxies, n and g on single Sérsics "
          f"(without the card's {card_floors or 'none'}):")
    for name in PARAMETERS:
        part = rows[rows["kind"] == ("bulge+disk" if name in RELATIVE else "sersic")]
        value, true = part[f"{JUDGED}.{name}"].to_numpy(float), part[f"true_{name}"].to_numpy(float)
        scale = np.abs(value) if name in RELATIVE_FLOOR else 1.0
        err = np.sqrt(np.fmax(part[f"{JUDGED}.{name}_err"].to_numpy(float) ** 2
                              - (card_floors.get(name, 0.0) * scale) ** 2, 0.0))
        floors[name] = floor_for_coverage(np.abs(value - true), err, scale)
        print(f"  {SHORT[name]:<5} N {len(part):>5}  68% coverage without a floor "
              f"{100 * np.mean(np.abs(value - true) <= err):5.1f}"
              f"  floor {floors[name]:.4f}" + (" x value" if name in RELATIVE_FLOOR else ""))
    print("  model.json: " + json.dumps({"refine_model_error": {"floors": {
        k: round(v, 4) for k, v in floors.items() if v > 0}}}))


if __name__ == "__main__":
    main()
