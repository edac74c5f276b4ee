"""End-to-end ``galcae infer`` throughput, its overhead over a bare encoder, and peak memory.

    python benchmarks/inference_speed.py [--run RUN] [--n 100000] [--small 10000] [--workdir DIR]
    python benchmarks/inference_speed.py --run survey     # the shipped, conditioned model
    python benchmarks/inference_speed.py --run survey --population survey --n 20000
    python benchmarks/inference_speed.py --run survey --population faint --n 20000

Writes a FITS cube of ``--n`` 64x64 stamps (a simulation of 1,000 paper galaxies, or with
``--population survey`` 2,000 survey galaxies at one seeing, tiled: the pixels are
realistic and rendering does not dominate; ``faint`` is the survey population with fluxes
up to 15,000 ADU instead of 300,000, so that about 10 % are bright enough to refine, as in a
deep survey's catalog), then, side by side, each the fastest of ``--repeat`` runs:

- the bare encoder: the network's forward pass over the same stamps already normalised
  in memory (galcae's batch) -- the compute floor;
- ``galcae infer`` in-process, and with ``--workers 2``: FITS read, normalisation,
  encoder, errors, flags, Parquet parts and the final catalog, all included; for a model
  that refines by default (``survey``), both with ``--no-refine`` and by default (the
  fraction refined is printed);
- peak resident memory of in-process ``galcae infer`` (a fresh process each) on
  ``--small`` and ``--n`` stamps: flat memory means the two are close (memory grows with the
  chunk, so the default ``--small`` 8,192 gives the same 4,096-stamp chunks as 20,000's
  4,000).

Without ``--run`` a model is trained for one epoch on the simulated galaxies (speed does
not depend on the weights). ``--run`` also takes a shipped model's name; a conditioned
model is given one PSF for the whole cube, and its bare encoder includes the condition
input and the variance head.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from astropy.io import fits

from galcae.checkpoint import load_model
from galcae.config import load_stage
from galcae.dataset import Dataset
from galcae.simulate import simulate_dataset
from galcae.train import train_model

#: The PSF a conditioned model is told for every stamp of the cube.
PSF = {"psf_fwhm": 0.8, "psf_beta": 3.5}
_SURVEY = ["n_galaxies=2000", f"psf.fwhm={PSF['psf_fwhm']}", f"psf.beta={PSF['psf_beta']}"]
#: --population: (preset, simulate overrides) of the galaxies tiled into the cube.
POPULATIONS = {"paper": ("paper", []), "survey": ("survey", _SURVEY),
               "faint": ("survey", _SURVEY + ["ranges.flux=[300,15000]"])}

# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the (large) parent.
PEAK_RSS = ("import re, sys; from galcae.cli import main; rc = main(sys.argv[1:]); "
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
            "print('PEAK_RSS_KB', hwm); sys.exit(rc)")


def write_cube(path: Path, images: np.ndarray, n: int) -> None:
    """A FITS cube of ``n`` stamps, streamed so this script's memory stays small too."""
    size = images.shape[-1]
    header = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 3, "NAXIS1": size,
                          "NAXIS2": size, "NAXIS3": n, "BUNIT": "adu"})
    stream = fits.StreamingHDU(path, header)
    for start in range(0, n, len(images)):
        stream.write(images[:min(len(images), n - start)].astype(">f4"))
    stream.close()


def infer(run: Path, cube: Path, out: Path, *extra) -> tuple[float, int]:
    """Seconds and peak RSS (kB) of ``galcae infer`` in a fresh Python process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, "infer", str(run), str(cube), "-o",
                           str(out), "--overwrite", *extra], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"galcae infer failed:\n{done.stderr}")
    rss = int(done.stdout.split("PEAK_RSS_KB")[-1].split()[0])
    return seconds, rss


def bare_encoder_seconds(run: Path, images: np.ndarray, n: int) -> float:
    """The network alone over ``n`` stamps already normalised in memory, in galcae's batches."""
    model = load_model(run, device="cpu")
    x = model.to_input(images)
    c = model.condition_input(images, PSF)
    c = None if c is None else torch.as_tensor(c)
    net, step = model.network, model.batch_size
    with torch.inference_mode():
        net.heads(net.encoder(x[:step]), None if c is None else c[:step])
        start = time.perf_counter()
        for i in range(0, n, step):
            j = i % (len(x) - step)
            net.heads(net.encoder(x[j:j + step]), None if c is None else c[j:j + step])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run [default: train one epoch here]")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=8_192)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--population", choices=tuple(POPULATIONS), default="paper",
                        help="the galaxies tiled into the cube")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each timing; the fastest counts")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="galcae-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    data = work / f"dataset_{args.population}"
    if not data.exists():
        preset, overrides = POPULATIONS[args.population]
        simulate_dataset(load_stage("simulate", preset, overrides), data, workers=2)
    run = args.run or work / "run"
    if args.run is None and not (run / "model.json").exists():
        train_model(data, run, load_stage("train", "paper", ["epochs=1"]))
    images = Dataset.open(data).load_images()
    images = images[np.isfinite(images).reshape(len(images), -1).all(axis=1)]

    rows = []
    for n in (args.small, args.n):
        cube = work / f"cube_{args.population}_{n}.fits"
        if not cube.exists():
            write_cube(cube, images, n)
        rows.append((n, cube))

    n, cube = rows[-1]
    bare = min(bare_encoder_seconds(run, images, n) for _ in range(args.repeat))
    model = load_model(run, device="cpu")
    psf = ("--psf-fwhm", str(PSF["psf_fwhm"]), "--psf-beta", str(PSF["psf_beta"])) if model.conditions else ()
    refines = model.card.refinement.min_snr is not None
    runs = [("galcae infer --no-refine, in-process", ("--no-refine",)),
            ("galcae infer --no-refine, --workers 2", ("--no-refine", "--workers", "2"))] if refines else []
    runs += [("galcae infer (default), in-process", ()), ("galcae infer (default), --workers 2", ("--workers", "2"))]
    timed, rss_big = {}, None
    for _ in range(args.repeat):  # interleaved, so that a slow spell of the machine hits all
        for label, extra in runs:
            seconds, rss = infer(run, cube, work / "cat.parquet", *psf, *extra)
            timed[label] = min(seconds, timed.get(label, np.inf))
            rss_big = rss_big or rss
    refined = pd.read_parquet(work / "cat.parquet", columns=["refined"])["refined"].mean() if refines else 0.0
    _, rss_small = infer(run, rows[0][1], work / "cat_small.parquet", *psf, *runs[0][1])

    print(f"galcae infer ({run}) on a FITS cube of {n:,} 64x64 {args.population} stamps, CPU, "
          f"{torch.get_num_threads()} threads; the default refines {refined:.0%} of them")
    print(f"{'measurement':<44} {'seconds':>9} {'galaxies/s':>11} {'vs bare':>8}")
    for label, seconds in (("bare encoder (in memory)", bare), *timed.items()):
        print(f"{label:<44} {seconds:>9.1f} {n / seconds:>11.0f} {seconds / bare:>8.2f}")
    if refines:
        print(f"default / --no-refine, in-process: {timed[runs[2][0]] / timed[runs[0][0]]:.2f}; "
              f"--workers 2: {timed[runs[3][0]] / timed[runs[1][0]]:.2f}")
    print(f"\n{'peak memory of galcae infer (' + runs[0][0].split(', ')[0] + ', in-process)':<44} "
          f"{'stamps':>9} {'MiB':>11}")
    print(f"{'':<44} {args.small:>9,} {rss_small / 1024:>11.0f}")
    print(f"{'':<44} {n:>9,} {rss_big / 1024:>11.0f}")
    print(json.dumps({"n": n, "population": args.population, "bare_s": bare, "refined_fraction": refined,
                      **{label: seconds for label, seconds in timed.items()},
                      "peak_rss_mib": {args.small: rss_small / 1024, n: rss_big / 1024}}))


if __name__ == "__main__":
    main()
