"""The paper's R² table (Fig. 5): CAE vs PCA-64, on a finished run or a fresh demo.

    python benchmarks/r2_table.py                      # runs `galcae demo` into bench_output/
    python benchmarks/r2_table.py --full               # the paper's 100 epochs
    python benchmarks/r2_table.py --run demo_output/run  # re-print an evaluated run

Prints R² in physical units and in log10, and the CAE's relative error per S/N bin.
"""

import argparse
import json
from pathlib import Path

from galcae.demo import r2_table, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an evaluated run directory to report on")
    parser.add_argument("--output", type=Path, default=Path("bench_output"))
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--epochs", type=int)
    args = parser.parse_args()
    if args.run is None:
        metrics = run_demo(args.output, full=args.full, epochs=args.epochs, overwrite=True,
                           echo=lambda *_: None)
    else:
        metrics = json.loads((args.run / "eval" / "metrics.json").read_text())
    print(r2_table(metrics))
    print()
    print(r2_table({**metrics, "r2": metrics["r2_log10"]}).replace("R² on", "R² of log10 on", 1))
    print()
    print(f"{'parameter':<20}{'S/N bin':>12}{'N':>6}{'bias':>10}{'scatter':>10}")
    for name, summary in metrics["relative_error"].items():
        for b in [{"snr_min": None, "snr_max": None, **summary["all"]}] + summary["snr_bins"]:
            label = "all" if b["snr_min"] is None else \
                f"{b['snr_min']:.0f}-{'inf' if b['snr_max'] is None else int(b['snr_max'])}"
            bias = "-" if b["bias"] is None else f"{b['bias']:+.3f}"
            scatter = "-" if b["scatter"] is None else f"{b['scatter']:.3f}"
            print(f"{name:<20}{label:>12}{b['n']:>6}{bias:>10}{scatter:>10}")


if __name__ == "__main__":
    main()
