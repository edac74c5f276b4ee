"""End-to-end ``galcae infer`` throughput, its overhead over a bare encoder, and peak memory.

    python benchmarks/inference_speed.py [--run RUN] [--n 100000] [--small 10000] [--workdir DIR]
    python benchmarks/inference_speed.py --run survey     # the shipped, conditioned model

Writes a FITS cube of ``--n`` 64x64 stamps (a 1,000-galaxy paper simulation tiled, so
the pixels are realistic and rendering does not dominate), then, side by side:

- the bare encoder: the network's forward pass over the same stamps already normalised
  in memory (batch 1024) -- the compute floor;
- ``galcae infer`` in-process, and with ``--workers 2``: FITS read, normalisation,
  encoder, errors, flags, Parquet parts and the final catalog, all included;
- peak resident memory of in-process ``galcae infer`` (a fresh process each) on
  ``--small`` and ``--n`` stamps: flat memory means the two are close.

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
import torch
from astropy.io import fits

from galcae.checkpoint import load_model
from galcae.config import load_stage
from galcae.dataset import Dataset
from galcae.simulate import simulate_dataset
from galcae.train import train_model

#: The PSF a conditioned model is told for every stamp of the cube.
PSF = {"psf_fwhm": 0.8, "psf_beta": 3.5}

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
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="galcae-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    data = work / "dataset"
    if not data.exists():
        simulate_dataset(load_stage("simulate", "paper"), data, workers=2)
    run = args.run or work / "run"
    if args.run is None and not (run / "model.json").exists():
        train_model(data, run, load_stage("train", "paper", ["epochs=1"]))
    images = Dataset.open(data).load_images()
    images = images[np.isfinite(images).reshape(len(images), -1).all(axis=1)]

    rows = []
    for n in (args.small, args.n):
        cube = work / f"cube_{n}.fits"
        if not cube.exists():
            write_cube(cube, images, n)
        rows.append((n, cube))

    n, cube = rows[-1]
    bare = bare_encoder_seconds(run, images, n)
    psf = ("--psf-fwhm", str(PSF["psf_fwhm"]), "--psf-beta", str(PSF["psf_beta"])) \
        if load_model(run, device="cpu").conditions else ()
    one, rss_big = infer(run, cube, work / "cat1.parquet", *psf)
    two, _ = infer(run, cube, work / "cat2.parquet", "--workers", "2", *psf)
    _, rss_small = infer(run, rows[0][1], work / "cat_small.parquet", *psf)

    print(f"galcae infer ({run}) on a FITS cube of {n:,} 64x64 stamps, CPU, "
          f"{torch.get_num_threads()} threads")
    print(f"{'measurement':<44} {'seconds':>9} {'galaxies/s':>11} {'vs bare':>8}")
    for label, seconds in (("bare encoder (in memory, batch 32)", bare),
                           ("galcae infer, in-process", one),
                           ("galcae infer, --workers 2", two)):
        print(f"{label:<44} {seconds:>9.1f} {n / seconds:>11.0f} {seconds / bare:>8.2f}")
    print(f"\n{'peak memory of galcae infer (in-process)':<44} {'stamps':>9} {'MiB':>11}")
    print(f"{'':<44} {args.small:>9,} {rss_small / 1024:>11.0f}")
    print(f"{'':<44} {n:>9,} {rss_big / 1024:>11.0f}")
    print(json.dumps({"n": n, "bare_s": bare, "inprocess_s": one, "workers2_s": two,
                      "overhead_ratio": one / bare, "peak_rss_mib": {args.small: rss_small / 1024,
                                                                     n: rss_big / 1024}}))


if __name__ == "__main__":
    main()
