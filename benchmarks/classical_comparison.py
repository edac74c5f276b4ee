"""CAE vs PCA-64 + regression vs the classical Sérsic fit, against the Cramér–Rao bound.

    python benchmarks/classical_comparison.py [--run demo_output/run] [--n 500] [--workers 2]

Simulates ``--n`` fresh paper galaxies (a seed the run never saw, so all are held out),
measures them with the run's CAE (encoder only, batched, timed), with PCA-64 + linear
regression fitted on the run's training set, and with the maximum-likelihood fit on
``--workers`` processes (timed), computes every galaxy's Cramér–Rao bound, and prints
bias, robust scatter, outliers, R², efficiency and failures per method, overall, in S/N
bins and for n > 3 vs n <= 3, and the time per galaxy of each method side by side.
"""

import argparse
import tempfile
import time
from pathlib import Path

from galcae.checkpoint import load_model
from galcae.config import load_stage
from galcae.dataset import Dataset
from galcae.evaluate.evaluation import comparison_section
from galcae.evaluate.pca import pca_baseline
from galcae.simulate import simulate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("demo_output/run"))
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20261121)
    args = parser.parse_args()
    if not (args.run / "model.json").exists():
        raise SystemExit(f"{args.run} holds no model: run `make demo` first, or pass --run RUN")

    model = load_model(args.run)
    work = Path(tempfile.mkdtemp(prefix="galcae-compare-"))
    test = simulate_dataset(load_stage("simulate", "paper", [f"n_galaxies={args.n}", f"seed={args.seed}"]),
                            work / "test", workers=args.workers)
    ids = test.usable
    images = test.load_images(ids)
    names = model.supervised

    model.predict(images[:model.batch_size])
    start = time.perf_counter()
    cae = model.predict(images)
    cae_seconds = (time.perf_counter() - start) / len(ids)

    train = Dataset.open(model.meta["dataset"]["path"])
    train_ids = train.usable
    pca = pca_baseline(model.normalization.forward(train.load_images(train_ids)),
                       {n: train.params[n][train_ids] for n in names},
                       model.normalization.forward(images), {n: test.params[n][ids] for n in names})
    section, _ = comparison_section(test, ids, images, {n: cae[n] for n in names}, pca["predicted"],
                                    cae_seconds, args.workers)

    print(f"{len(ids)} held-out paper galaxies; run {args.run} ({model.meta['epoch']} epochs)")
    print(f"{'method':<10} {'parameter':<18} {'subset':<10} {'N':>4} {'bias':>8} {'scatter':>8} "
          f"{'outliers':>8} {'R²':>7} {'efficiency':>10}")
    for method, per_param in section["comparison"].items():
        for name, by_subset in per_param.items():
            for subset, s in by_subset.items():
                if s.get("n", 0) < 3:
                    continue
                eff = "" if s["efficiency"] is None else f"{s['efficiency']:.3f}"
                print(f"{method:<10} {name:<18} {subset:<10} {s['n']:>4} {s['bias']:>8.3f} "
                      f"{s['scatter']:>8.3f} {s['outliers']:>8.3f} {s['r2']:>7.3f} {eff:>10}")
    c = section["classical"]
    print(f"\nclassical fits: {c['failed']} of {c['n']} failed or hit max_nfev {c['statuses']}")
    print(f"{'method':<44} {'s/galaxy':>10}")
    print(f"{'CAE encoder, batched, in-process (2 threads)':<44} {section['timing']['cae']:>10.2e}")
    print(f"{f'classical fit, {args.workers} worker processes':<44} {section['timing']['classical']:>10.2e}")
    print(f"{'classical fit, median single fit (1 core)':<44} {c['median_fit_seconds']:>10.2e}")
    print(f"speedup (classical / CAE, same run): {section['speedup_vs_classical']:.0f}x")
    for name in names:
        cae_s = section["comparison"]["cae"][name]["snr > 20"]
        fit_s = section["comparison"]["classical"][name]["snr > 20"]
        if cae_s.get("n", 0) >= 3:
            print(f"S/N > 20, {name}: CAE scatter / classical scatter = "
                  f"{cae_s['scatter'] / fit_s['scatter']:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
