"""Simulation throughput: galaxies/s in-process and on a local Dask cluster of 2 workers.

    python benchmarks/simulation_speed.py [--galaxies 600] [--config paper]

Both runs render the same galaxies (same config and seed) side by side, so the ratio
between them is meaningful on a shared machine even when absolute times are not.
"""

import argparse
import tempfile
import time
from pathlib import Path

from galcae.config import load_stage
from galcae.simulate import simulate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--galaxies", type=int, default=600)
    parser.add_argument("--config", default="paper")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    cfg = load_stage("simulate", args.config, [f"n_galaxies={args.galaxies}", "chunk_size=50"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            start = time.perf_counter()
            simulate_dataset(cfg, Path(tmp) / f"w{workers}", workers=workers)
            seconds = time.perf_counter() - start
            rows.append((workers, seconds, args.galaxies / seconds))
    print(f"Simulation of {args.galaxies} '{args.config}' galaxies "
          f"({cfg.stamp_size}x{cfg.stamp_size} px), wall time including cluster start-up")
    print(f"{'workers':>8} {'seconds':>9} {'galaxies/s':>11} {'speed-up':>9}")
    for workers, seconds, rate in rows:
        print(f"{workers:>8} {seconds:>9.1f} {rate:>11.1f} {rate / rows[0][2]:>9.2f}")


if __name__ == "__main__":
    main()
