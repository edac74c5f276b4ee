"""How completely `galcae infer` detects the sources of realistic simulated fields.

Source detection of `galcae infer` on a FITS field (`galcae.catalog.sources._plan_field`:
a sep background subtracted, sep.extract at `--detect-threshold`): completeness per S/N
bin for compact and large galaxies and for stars, spurious detections, blends and bright
galaxies split into several detections.

    python benchmarks/realistic_field.py                    # 8 fields of 1024 x 1024, 2 workers
    python benchmarks/realistic_field.py --compare          # and the detection of before, side by side
    python benchmarks/realistic_field.py --detect-threshold 4 --workdir DIR   # fields kept in DIR (reused)
    python benchmarks/realistic_field.py --n-fields 4 --save f.parquet
    python benchmarks/realistic_field.py --from f.parquet   # the tables again, no rerun

What is simulated (GalSim, the galaxies and PSFs of `realistic_psf.py`): `--n-fields` fields
of `--size` pixels square at 0.2"/pixel (1024: 3.4' x 3.4', 11.7 arcmin²), each with one PSF
(a `kolmogorov+optics` or Kolmogorov `elliptical` PSF of realistic_psf's draw, FWHM
0.5-1.1": not a Moffat), a sky drawn log-uniformly in 100-2000 ADU/pixel and CCD noise
(Poisson on sources + sky in electrons, gain 1, read noise 5 e-), written sky-subtracted
(the noise of the sky kept, its level not: galcae subtracts a sep background of its own,
so a field with its sky would do as well). Sources at uniform positions:
- galaxies, `--density` per arcmin² (Poisson; default 80, a deep survey's count including
  those below its detection limit), total flux in 3e2-3e5 ADU with dN/dlnF ∝ F^-0.5
  (:data:`COUNT_SLOPE`: faint galaxies the most numerous, about a third of them above
  S/N 10), (n, r½, |g|) from COSMOS rows and a `--bulge-fraction` of bulge + disks as
  realistic_psf.py draws them;
- stars, `--star-density` per arcmin² (default 3), point sources through the PSF with flux
  log-uniform in 1e3-1e6 ADU (no saturation).
Each source is drawn on its own stamp and added to the field. The field is a FITS file with
a TAN WCS of 0.2"/pixel and its PSF image (63 x 63, the pixel's response included) in a `PSF`
HDU; all fields go through one `galcae.catalog.infer.infer_catalog` call, `--no-refine`, at
`--detect-threshold`, exactly as `galcae infer FIELDS --no-refine` runs.

Truths: every source's position (the catalog's convention, pixel centres at i + 0.5), kind,
flux, r½ (realistic_psf.py's definition: a single Sérsic's own, a bulge + disk's measured
on the intrinsic profile) and S/N, the matched-filter S/N of the source's own noiseless
image (`galcae.physics.optimal_snr` with the field's variance), as realistic.py's.
Sources within :data:`EDGE` pixels of a border are drawn but not scored.

Matching: catalog rows (`x_field`, `y_field`) and truths closer than :data:`MATCH_RADIUS`
pixels, one to one, closest pairs first, truths of S/N >= 5 before fainter ones. A truth
is *found* when matched. A detection is *spurious* when no truth (of any S/N) lies within
the radius; a *fragment* when, unmatched, it lies inside a galaxy of S/N >= 20 (within
twice its r½, at least twice the radius: the galaxy split); a *blend* when two truths of
S/N >= 5 have it as their nearest detection within the radius (one of them is lost). A
truth is *crowded* when a source of at least a third of its S/N lies within 2.5 PSF FWHM
(:data:`CROWDED`): completeness is also given for isolated and crowded compact galaxies.
`--compare` runs the detection of before this benchmark (:data:`LEGACY`: sep's 3x3 kernel,
the threshold in sigma of the pixels) on the same fields too, and prints both side by side
(about 3 minutes on 2 cores; 2.5 without).

Target: completeness >= 90 % in every S/N bin from 10 for galaxies of r½ <= 1.5", with few
spurious detections (reported per field and per arcmin²) and bright galaxies not split.
"""

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import galsim
import numpy as np
import pandas as pd
from astropy.io import fits
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realistic_psf as rp  # noqa: E402 - the galaxies, PSFs and noise of that benchmark

from galcae.card import resolve_model  # noqa: E402
from galcae.catalog.infer import InferOptions, infer_catalog  # noqa: E402
from galcae.physics import optimal_snr, pixel_variance  # noqa: E402

GALAXY_FLUX, STAR_FLUX = (3e2, 3e5), (1e3, 1e6)  # ADU
#: dN/dlnF ∝ F^-COUNT_SLOPE for the galaxies' total fluxes (number counts of slope
#: dlog N/dm = 0.4 COUNT_SLOPE = 0.2: flatter than the 0.3-0.4 of bright counts, as faint ones are).
COUNT_SLOPE = 0.5
PSF_SIZE = 63
#: Pixels: a detection and a truth closer than this are a match (0.5").
MATCH_RADIUS = 2.5
#: Pixels from a border inside which sources are drawn but not scored.
EDGE = 8
#: Arcsec: the compact galaxies of the target.
COMPACT = 1.5
SNR_EDGES = {"<5": (0, 5), "5-10": (5, 10), "10-20": (10, 20), "20-50": (20, 50), "50-100": (50, 100),
             ">100": (100, np.inf)}
SCORED_SNR = 5.0  # truths at or above it are matched first, counted in blends
#: A truth is *crowded* when another source of at least NEIGHBOUR_RATIO times its S/N lies
#: within CROWDED PSF FWHMs of it (what a deblender may not separate).
CROWDED, NEIGHBOUR_RATIO = 2.5, 1 / 3
SPLIT_SNR = 20.0  # a galaxy this bright with unmatched detections inside it is split
TARGET = 0.90  # completeness in every bin of S/N >= 10, r½ <= COMPACT


# --- the fields ------------------------------------------------------------------------------


def psf_row(seed: int, number: int) -> dict:
    """A field's PSF: the first of realistic_psf's rows drawn for it that is not a Moffat."""
    p = rp.draw_parameters(12, [seed, number, 1], 0.0)
    keep = (p["family"] == "kolmogorov+optics") | ((p["family"] == "elliptical") & p["psf_kolmogorov"])
    return p[keep].iloc[0].to_dict()


def draw_field(number: int, args) -> tuple[dict, pd.DataFrame]:
    """A field's PSF, sky and noise seed, and its sources' parameters (one row each)."""
    rng = np.random.default_rng([args.seed, number])
    area = (args.size * rp.SCALE / 60) ** 2  # arcmin²
    n_gal, n_star = rng.poisson(args.density * area), rng.poisson(args.star_density * area)
    galaxies = rp.draw_parameters(n_gal, int(rng.integers(2**31)), args.bulge_fraction)
    lo, hi = np.array(GALAXY_FLUX) ** -COUNT_SLOPE  # inverse-CDF draw of F^-slope in ln F
    galaxies["flux"] = (hi + rng.uniform(size=n_gal) * (lo - hi)) ** (-1 / COUNT_SLOPE)
    galaxies["true_flux"] = galaxies["flux"]
    stars = pd.DataFrame({"kind": "star", "flux": rp.log_uniform(rng, STAR_FLUX, n_star)})
    stars["true_flux"] = stars["flux"]
    sources = pd.concat([galaxies, stars], ignore_index=True)
    sources["x"] = rng.uniform(0, args.size, len(sources))  # pixel centres at i + 0.5
    sources["y"] = rng.uniform(0, args.size, len(sources))
    sources["field"] = number
    field = {"number": number, "psf": psf_row(args.seed, number),
             "sky_level": float(rp.log_uniform(rng, rp.SKY, 1)[0]), "noise_seed": int(rng.integers(1, 2**31 - 1))}
    return field, sources


def stamp_half(row: dict, psf_fwhm: float) -> int:
    """Half the side (pixels) of a source's own stamp: its light out to ~5 r½ and the PSF's wings."""
    radius = 4 * psf_fwhm if row["kind"] == "star" else 5 * row["gal_r"] + 2 * psf_fwhm
    if row["kind"] == "star":
        radius *= 1 + np.log10(row["flux"] / STAR_FLUX[0])  # a bright star's wings reach further
    return int(np.clip(np.ceil(radius / rp.SCALE), 12, 160))


def render_field(field: dict, sources: pd.DataFrame, size: int) -> dict:
    """The noisy, sky-subtracted field, its PSF image and every source's S/N and r½."""
    gsparams = galsim.GSParams(maximum_fft_size=rp.FFT_CAP)
    psf = rp.psf_profile(field["psf"])
    psf_fwhm = rp.profile_fwhm(psf)
    psf_image = psf.drawImage(nx=PSF_SIZE, ny=PSF_SIZE, scale=rp.SCALE).array
    image = galsim.ImageF(size, size, scale=rp.SCALE)  # GalSim's pixel i (from 1) spans [i - 1, i) here
    snr, r_half, status = np.full(len(sources), np.nan), np.full(len(sources), np.nan), [""] * len(sources)
    for i, row in enumerate(sources.to_dict("records")):
        try:
            if row["kind"] == "star":
                profile = psf.withFlux(row["flux"])
            else:
                parts = rp.components(row)
                r_half[i] = row["true_half_light_radius"] if row["kind"] == "sersic" else \
                    rp.measured_half_light_radius(parts)
                profile = galsim.Convolve(rp.galaxy_profile(parts, gsparams), psf, gsparams=gsparams)
            h = stamp_half(row, psf_fwhm)
            cx, cy = int(np.floor(row["x"])) + 1, int(np.floor(row["y"])) + 1
            stamp = galsim.ImageF(galsim.BoundsI(cx - h, cx + h, cy - h, cy + h), scale=rp.SCALE)
            profile.drawImage(image=stamp, center=galsim.PositionD(row["x"] + 0.5, row["y"] + 0.5))
        except (galsim.GalSimError, MemoryError) as err:
            status[i] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
            continue
        overlap = stamp.bounds & image.bounds
        if not overlap.isDefined():
            continue
        image[overlap] += stamp[overlap]
        light = stamp[overlap].array
        snr[i] = optimal_snr(light, pixel_variance(light, field["sky_level"], rp.GAIN, rp.READ_NOISE))
    image.addNoise(galsim.CCDNoise(galsim.BaseDeviate(field["noise_seed"]), sky_level=field["sky_level"],
                                   gain=rp.GAIN, read_noise=rp.READ_NOISE))
    truth = sources.assign(snr=snr, r_half=r_half, status=status, psf_fwhm=psf_fwhm, sky_level=field["sky_level"],
                           family=field["psf"]["family"])
    keep = ["field", "kind", "x", "y", "flux", "r_half", "snr", "status", "psf_fwhm", "sky_level", "family",
            "gal_n", "gal_g"]
    return {"image": image.array.astype(np.float32), "psf_image": psf_image / psf_image.sum(),
            "truth": truth[keep]}


def _render(args) -> dict:
    return render_field(*args)


def write_field(path: Path, rendered: dict) -> None:
    """The field with a TAN WCS of the model's pixel scale and its PSF in a ``PSF`` HDU."""
    size = rendered["image"].shape[0]
    header = fits.Header()
    header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRPIX1=size / 2 + 0.5, CRPIX2=size / 2 + 0.5,
                  CRVAL1=150.0, CRVAL2=2.0, CDELT1=-rp.SCALE / 3600, CDELT2=rp.SCALE / 3600,
                  CUNIT1="deg", CUNIT2="deg")
    fits.HDUList([fits.PrimaryHDU(rendered["image"], header=header),
                  fits.ImageHDU(rendered["psf_image"].astype(np.float32), name="PSF")]).writeto(path, overwrite=True)


def inputs(work: Path, args) -> tuple[list[Path], pd.DataFrame]:
    """The fields in ``work`` (simulated unless there for these arguments) and their truths."""
    key = {k: getattr(args, k) for k in ("n_fields", "size", "seed", "density", "star_density", "bulge_fraction")}
    paths = [work / f"field-{i:03d}.fits" for i in range(args.n_fields)]
    stamp = work / "simulation.json"
    if stamp.exists() and json.loads(stamp.read_text()) == key:
        return paths, pd.read_parquet(work / "truth.parquet")
    start = time.perf_counter()
    jobs = [(*draw_field(i, args), args.size) for i in range(args.n_fields)]
    with ProcessPoolExecutor(max(1, min(args.workers, args.n_fields))) as pool:
        rendered = list(pool.map(_render, jobs))
    for path, r in zip(paths, rendered):
        write_field(path, r)
    truth = pd.concat([r["truth"] for r in rendered], ignore_index=True)
    truth["source"] = [str(paths[f]) for f in truth["field"]]
    print(f"simulated {args.n_fields} fields ({len(truth)} sources) in {time.perf_counter() - start:.0f} s",
          flush=True)
    truth.to_parquet(work / "truth.parquet")
    stamp.write_text(json.dumps(key))
    return paths, truth


#: `_plan_field`'s detection before `benchmarks/realistic_field.py` (`--compare`): sep's 3x3
#: kernel [[1,2,1],[2,4,2],[1,2,1]], the threshold in sigma of the pixels (8 sigma of the
#: convolved image at 3), 5 pixels, sep's deblending contrast 0.005.
LEGACY = {"DETECT_KERNEL": np.array([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]), "DETECT_KERNEL_NOISE": 1.0,
          "DETECT_MIN_AREA": 5, "DETECT_DEBLEND_CONT": 0.005}


def run(paths: list[Path], work: Path, args, legacy: bool = False) -> tuple[pd.DataFrame, float]:
    """`galcae infer FIELDS --no-refine --detect-threshold T`: (catalog, seconds); ``legacy``:
    with the detection settings of :data:`LEGACY` (fields are planned in this process)."""
    from galcae.catalog import sources

    saved = {name: getattr(sources, name) for name in LEGACY}
    out = work / ("catalog-legacy.parquet" if legacy else "catalog.parquet")
    start = time.perf_counter()
    try:
        if legacy:
            for name, value in LEGACY.items():
                setattr(sources, name, value)
        infer_catalog(resolve_model("survey"), [str(p) for p in paths], out, workers=args.workers,
                      options=InferOptions(refine_snr=None), detect_threshold=args.detect_threshold, overwrite=True,
                      echo=lambda line: print("   ", line, flush=True))
    finally:
        for name, value in saved.items():
            setattr(sources, name, value)
    return pd.read_parquet(out), time.perf_counter() - start


# --- matching -----------------------------------------------------------------------------------


def match_field(truth: pd.DataFrame, detections: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One field's truths and detections matched (columns added to both, see the docstring)."""
    txy = truth[["x", "y"]].to_numpy(float)
    dxy = detections[["x_field", "y_field"]].to_numpy(float)
    t_match, d_match = np.full(len(txy), -1), np.full(len(dxy), -1)
    d_spurious, d_fragment, d_blend = np.zeros(len(dxy), bool), np.zeros(len(dxy), bool), np.zeros(len(dxy), bool)
    lost_in_blend, split = np.zeros(len(txy), bool), np.zeros(len(txy), bool)
    if len(txy) and len(dxy):
        t_tree, d_tree = cKDTree(txy), cKDTree(dxy)
        snr = truth["snr"].to_numpy(float)
        pairs = d_tree.sparse_distance_matrix(t_tree, MATCH_RADIUS, output_type="ndarray")
        for k in np.lexsort((pairs["v"], snr[pairs["j"]] < SCORED_SNR)):  # scored truths first, closest first
            i, j = pairs["i"][k], pairs["j"][k]
            if d_match[i] < 0 and t_match[j] < 0:
                d_match[i], t_match[j] = j, i
        d_spurious = np.array([len(n) == 0 for n in t_tree.query_ball_point(dxy, MATCH_RADIUS)], bool)
        reach = np.maximum(2 * truth["r_half"].to_numpy(float) / rp.SCALE, 2 * MATCH_RADIUS)
        for j in np.flatnonzero((snr >= SPLIT_SNR) & (truth["kind"] != "star").to_numpy()):
            extra = [i for i in d_tree.query_ball_point(txy[j], reach[j]) if d_match[i] < 0]
            d_fragment[extra] = True
            split[j] = bool(extra)
        scored = np.flatnonzero(snr >= SCORED_SNR)
        distance, nearest = d_tree.query(txy[scored], distance_upper_bound=MATCH_RADIUS)
        near = np.isfinite(distance)
        d_blend = np.bincount(nearest[near], minlength=len(dxy)) >= 2
        lost_in_blend[scored[near]] = (t_match[scored[near]] < 0) & d_blend[nearest[near]]
    crowded = np.zeros(len(txy), bool)
    if len(txy):
        snr = truth["snr"].to_numpy(float)
        radius = CROWDED * truth["psf_fwhm"].to_numpy(float)[0] / rp.SCALE
        for j, near in enumerate(cKDTree(txy).query_ball_point(txy, radius)):
            crowded[j] = any(k != j and snr[k] >= NEIGHBOUR_RATIO * snr[j] for k in near)
    truth = truth.assign(found=t_match >= 0, lost_in_blend=lost_in_blend, split=split, crowded=crowded)
    matched = d_match >= 0
    detections = detections.assign(matched=matched, spurious=d_spurious, fragment=d_fragment, blend=d_blend,
                                   truth_kind=np.where(matched, truth["kind"].to_numpy()[d_match], ""),
                                   truth_snr=np.where(matched, truth["snr"].to_numpy(float)[d_match], np.nan))
    return truth, detections


def scored_region(frame: pd.DataFrame, x: str, y: str, size: int) -> np.ndarray:
    values = frame[[x, y]].to_numpy(float)
    return ((values >= EDGE) & (values <= size - EDGE)).all(axis=1)


def evaluate(truth: pd.DataFrame, catalog: pd.DataFrame, size: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every field's truths and detections matched, only those away from the borders kept."""
    truths, detections = [], []
    for source, t in truth.groupby("source", sort=True):
        d = catalog[catalog["source"] == source]
        t, d = match_field(t.reset_index(drop=True), d.reset_index(drop=True))
        truths.append(t[scored_region(t, "x", "y", size) & (t["status"] == "")])
        detections.append(d[scored_region(d, "x_field", "y_field", size)])
    return pd.concat(truths, ignore_index=True), pd.concat(detections, ignore_index=True)


# --- tables -------------------------------------------------------------------------------------


def completeness(rows: pd.DataFrame) -> str:
    n = len(rows)
    if not n:
        return f"{0:>6}{'':>14}"
    p = rows["found"].mean()
    return f"{n:>6}{100 * p:>8.1f}±{100 * np.sqrt(p * (1 - p) / n):<4.1f}"


def snr_bins(truth: pd.DataFrame) -> dict[str, np.ndarray]:
    snr = truth["snr"].to_numpy(float)
    return {label: (snr >= lo) & (snr < hi) for label, (lo, hi) in SNR_EDGES.items()}


def tables(truth: pd.DataFrame, detections: pd.DataFrame, meta: dict) -> None:
    area = meta["n_fields"] * ((meta["size"] - 2 * EDGE) * rp.SCALE / 60) ** 2
    print(f"{meta['n_fields']} fields of {meta['size']} x {meta['size']} pixels ({area / meta['n_fields']:.1f} "
          f"arcmin² each scored), --detect-threshold {meta['detect_threshold']:g}: {len(detections)} detections, "
          f"{len(truth)} truths ({(truth['kind'] == 'star').sum()} stars); infer {meta['seconds']:.0f} s on "
          f"{meta['workers']} worker(s)\n")
    galaxy = (truth["kind"] != "star").to_numpy()
    compact = galaxy & (truth["r_half"].to_numpy(float) <= COMPACT)
    large = galaxy & ~compact
    star = ~galaxy
    print(f"completeness (%, ±1 sigma) per S/N bin; a truth is found when a detection lies within "
          f"{MATCH_RADIUS:g} pixels")
    heads = (f'galaxies r½ <= {COMPACT}"', f'galaxies r½ > {COMPACT}"', "stars")
    print(f"  {'S/N':>7}  " + "".join(f"{head:>20}" for head in heads))
    print(f"  {'':>7}  " + f"{'N':>6}{'found':>14}" * 3)
    verdicts = []
    for label, inside in snr_bins(truth).items():
        print(f"  {label:>7}  {completeness(truth[compact & inside])}{completeness(truth[large & inside])}"
              f"{completeness(truth[star & inside])}")
        if SNR_EDGES[label][0] >= 10 and (compact & inside).any():
            verdicts.append((label, truth[compact & inside]["found"].mean()))
    high = truth["snr"].to_numpy(float) >= 10
    print(f"  {'>=10':>7}  {completeness(truth[compact & high])}{completeness(truth[large & high])}"
          f"{completeness(truth[star & high])}")
    crowded = truth["crowded"].to_numpy(bool)
    print(f"galaxies r½ <= {COMPACT}\" isolated / crowded (a source of >= {NEIGHBOUR_RATIO:.2g} times their S/N "
          f"within {CROWDED:g} PSF FWHM: {100 * crowded[compact & high].mean():.0f}% of them at S/N >= 10)")
    print(f"  {'S/N':>7}  {'N':>6}{'isolated':>14}{'N':>6}{'crowded':>14}")
    for label, inside in [*[(k, v) for k, v in snr_bins(truth).items() if SNR_EDGES[k][0] >= 5], (">=10", high)]:
        print(f"  {label:>7}  {completeness(truth[compact & inside & ~crowded])}"
              f"{completeness(truth[compact & inside & crowded])}")
    n_fields = meta["n_fields"]
    spurious, fragments = detections["spurious"].to_numpy(bool), detections["fragment"].to_numpy(bool)
    print(f"\nspurious detections (no truth within {MATCH_RADIUS:g} pixels): {spurious.sum()} "
          f"({spurious.sum() / n_fields:.1f} per field, {spurious.sum() / area:.2f} per arcmin², "
          f"{100 * spurious.mean():.1f}% of detections)")
    print(f"  of which inside a galaxy of S/N >= {SPLIT_SNR:g} (fragments of it): {(spurious & fragments).sum()}, "
          f"elsewhere (noise, blends' centroids): {(spurious & ~fragments).sum()} "
          f"({(spurious & ~fragments).sum() / area:.2f} per arcmin²)")
    unmatched_real = ~detections["matched"].to_numpy(bool) & ~spurious
    print(f"unmatched detections with a truth within {MATCH_RADIUS:g} pixels (second detections of one source): "
          f"{unmatched_real.sum()}")
    print("bright galaxies split (an unmatched detection within 2 r½): per S/N bin")
    for label in ("20-50", "50-100", ">100"):
        rows = truth[galaxy & snr_bins(truth)[label]]
        print(f"  {label:>7}  {len(rows):>6} galaxies, {rows['split'].sum():>4} split "
              f"({100 * rows['split'].mean() if len(rows) else np.nan:.1f}%)")
    blends = detections["blend"].to_numpy(bool)
    scored = truth["snr"].to_numpy(float) >= SCORED_SNR
    print(f"blends (two truths of S/N >= {SCORED_SNR:g} nearest to one detection within {MATCH_RADIUS:g} pixels): "
          f"{blends.sum()} detections ({100 * blends.mean():.2f}%); truths of S/N >= {SCORED_SNR:g} lost in one: "
          f"{truth['lost_in_blend'][scored].sum()} of {scored.sum()} "
          f"({100 * truth['lost_in_blend'][scored].mean():.2f}%)")
    missed = truth[compact & high & ~truth["found"]]
    if len(missed):
        print(f"compact galaxies of S/N >= 10 missed: {len(missed)}, median S/N {missed['snr'].median():.1f}, "
              f"median r½ {missed['r_half'].median():.2f}\", lost in a blend {missed['lost_in_blend'].sum()}")
    star_flags(detections)
    failed = [f"S/N {label}: {100 * c:.1f}%" for label, c in verdicts if c < TARGET]
    print(f"\nTarget, completeness >= {100 * TARGET:g}% in every S/N bin >= 10 for galaxies of r½ <= {COMPACT}\": "
          + ("met (" + ", ".join(f"{label} {100 * c:.1f}%" for label, c in verdicts) + ")" if not failed
             else "NOT met: " + ", ".join(failed)))


def star_flags(detections: pd.DataFrame) -> None:
    """``flag_star`` of the matched detections, per S/N bin of the truth they matched: the
    share of the stars flagged, and of the galaxies."""
    if "flag_star" not in detections:
        return
    flagged = detections["flag_star"].to_numpy(bool)
    kind, snr = detections["truth_kind"].to_numpy(), detections["truth_snr"].to_numpy(float)
    print("\nflag_star of matched detections, per S/N bin of their truth: stars flagged | galaxies flagged")
    for label, (lo, hi) in SNR_EDGES.items():
        inside = (snr >= lo) & (snr < hi)
        star, galaxy = inside & (kind == "star"), inside & (kind != "star") & (kind != "")
        print(f"  {label:>7}  {star.sum():>6} stars {100 * flagged[star].mean() if star.any() else np.nan:>6.1f}%"
              f"   {galaxy.sum():>6} galaxies {100 * flagged[galaxy].mean() if galaxy.any() else np.nan:>6.2f}%")


def side_by_side(runs: dict[str, tuple[pd.DataFrame, pd.DataFrame]], meta: dict) -> None:
    """Completeness, spurious detections, splits and blends of two detection settings on the same fields."""
    area = meta["n_fields"] * ((meta["size"] - 2 * EDGE) * rp.SCALE / 60) ** 2
    labels = list(runs)
    print(f"\nside by side, same fields, --detect-threshold {meta['detect_threshold']:g}: "
          + " | ".join(f"{label}" for label in labels))
    heads = (f'galaxies r½ <= {COMPACT}"', f'galaxies r½ > {COMPACT}"', "stars")
    print(f"  {'S/N':>7}" + "".join(f"{head:>24}" for head in heads))
    print(f"  {'':>7}" + ("  " + "".join(f"{label[:10]:>11}" for label in labels)) * 3)
    for label_bin in (*SNR_EDGES, ">=10"):
        cells = []
        for kind in ("compact", "large", "star"):
            for truth, _ in runs.values():
                galaxy = (truth["kind"] != "star").to_numpy()
                compact = galaxy & (truth["r_half"].to_numpy(float) <= COMPACT)
                rows = {"compact": compact, "large": galaxy & ~compact, "star": ~galaxy}[kind]
                inside = truth["snr"].to_numpy(float) >= 10 if label_bin == ">=10" else snr_bins(truth)[label_bin]
                found = truth["found"].to_numpy(bool)[rows & inside]
                cells.append(f"{100 * found.mean():>10.1f}%" if len(found) else f"{'-':>11}")
        print(f"  {label_bin:>7}" + "".join(("  " if i % 2 == 0 else "") + c for i, c in enumerate(cells)))
    print(f"  {'':>7}{'detections':>24}{'spurious /arcmin²':>24}{'of them not fragments':>24}"
          f"{'split, S/N>=50':>20}{'blend dets':>14}")
    for label, (truth, detections) in runs.items():
        spurious, fragment = detections["spurious"].to_numpy(bool), detections["fragment"].to_numpy(bool)
        bright = truth[(truth["kind"] != "star") & (truth["snr"] >= 50)]
        print(f"  {label[:7]:>7}{len(detections):>24}{spurious.sum() / area:>24.2f}"
              f"{(spurious & ~fragment).sum() / area:>24.2f}{100 * bright['split'].mean():>19.1f}%"
              f"{100 * detections['blend'].mean():>13.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-fields", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024, help="pixels per side")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--density", type=float, default=80.0, help="galaxies per arcmin²")
    parser.add_argument("--star-density", type=float, default=3.0, help="stars per arcmin²")
    parser.add_argument("--bulge-fraction", type=float, default=0.3)
    parser.add_argument("--detect-threshold", type=float, default=3.0, help="galcae infer's --detect-threshold")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--compare", action="store_true",
                        help="also run the detection settings of before this benchmark (LEGACY) on the same fields")
    parser.add_argument("--save", type=Path, help="write the matched truths here (Parquet; detections beside it)")
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the simulated fields here")
    parser.add_argument("--from", dest="saved", type=Path, help="print the tables of a --save'd run")
    args = parser.parse_args()
    if args.saved:
        meta = json.loads(args.saved.with_suffix(".json").read_text())
        tables(pd.read_parquet(args.saved), pd.read_parquet(args.saved.with_suffix(".detections.parquet")), meta)
        return
    runs = {}
    with tempfile.TemporaryDirectory(prefix="galcae-field-") as temporary:
        work = args.workdir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        paths, truth = inputs(work, args)
        for label, legacy in (("legacy", True), ("now", False)) if args.compare else (("now", False),):
            catalog, seconds = run(paths, work, args, legacy)
            runs[label] = (*evaluate(truth, catalog, args.size), seconds)
    meta = {"workers": args.workers, "n_fields": args.n_fields, "size": args.size, "seed": args.seed,
            "detect_threshold": args.detect_threshold, "density": args.density}
    for label, (matched, detections, seconds) in runs.items():
        if args.save:
            path = args.save if label == "now" else args.save.with_suffix(f".{label}.parquet")
            matched.to_parquet(path)
            detections.to_parquet(path.with_suffix(".detections.parquet"))
            path.with_suffix(".json").write_text(json.dumps({**meta, "seconds": seconds}))
        if args.compare:
            print(f"\n=== detection {'before this benchmark (LEGACY)' if label == 'legacy' else 'now'} ===")
        tables(matched, detections, {**meta, "seconds": seconds})
    if args.compare:
        side_by_side({label: r[:2] for label, r in runs.items()}, meta)


if __name__ == "__main__":
    main()
