"""Disentanglement of one or more models, side by side: each supervised latent of the same fresh
survey galaxies is moved by ±1, every decoded image is fitted with the classical fit, and the
changes are counted in each galaxy's Cramér–Rao bounds (`galcae evaluate` does this for one
galaxy; several make the numbers less noisy).

    python benchmarks/disentanglement.py                          # the shipped `survey` model
    python benchmarks/disentanglement.py --models survey runs/other --n 10

Columns (medians over the galaxies): response = fitted / encoded change of the moved parameter
(1 is ideal); own = its largest change in σ_CRB; leak = the largest change of any other
parameter in σ_CRB (target: <= 1, within the noise); cross-talk = leak / own, which does not
depend on the step size.
"""

import argparse
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from galcae.card import resolve_model
from galcae.checkpoint import load_model
from galcae.conditions import condition_table
from galcae.config import load_stage
from galcae.evaluate.disentangle import remeasured_traversals
from galcae.params import RENDER_CONDITIONS
from galcae.simulate import draw_parameters, render_chunk

STEPS = np.linspace(-1, 1, 5)


def traverse(model_path, image, row, galaxy_cfg) -> dict:
    """The re-measured traversals of one galaxy (runs in a worker process, one thread)."""
    import torch

    torch.set_num_threads(1)
    model = load_model(model_path, device="cpu")
    given = {k: np.array([row[k]]) for k in model.conditions if k in row}
    conditions = {k: float(v[0]) for k, v in
                  condition_table(model.conditions, image[None], given).items()}
    z = model.encode(image[None], conditions)[0]
    return remeasured_traversals(model, z, conditions, galaxy_cfg, STEPS)["traversals"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["survey"], help="shipped names or run directories")
    parser.add_argument("--n", type=int, default=6, help="galaxies to traverse from")
    parser.add_argument("--snr", type=float, nargs=2, default=(30.0, 300.0),
                        help="S/N range of the galaxies (fainter decoded images are too faint to fit)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    cfg = load_stage("simulate", "survey", [f"n_galaxies={40 * args.n}", f"seed={args.seed}"])
    truth = draw_parameters(cfg)
    rendered = render_chunk(cfg, truth)
    pick = np.flatnonzero((rendered["status"] == "ok") & (rendered["snr"] >= args.snr[0])
                          & (rendered["snr"] <= args.snr[1]))[:args.n]
    if not len(pick):
        raise SystemExit(f"no galaxy of {len(rendered['snr'])} has S/N in {args.snr}")
    print(f"{len(pick)} fresh survey galaxies (seed {args.seed}), S/N "
          + ", ".join(f"{s:.0f}" for s in rendered["snr"][pick]) + f"; steps {STEPS.tolist()}")
    rows = [{k: float(truth[k][i]) for k in RENDER_CONDITIONS if k in truth} for i in pick]
    with ProcessPoolExecutor(args.workers) as pool:
        for name in args.models:
            path = resolve_model(name)
            jobs = [pool.submit(traverse, path, rendered["images"][i], row, cfg.for_galaxy(row))
                    for i, row in zip(pick, rows)]
            table([job.result() for job in jobs], name)


def table(results: list[dict], name: str) -> None:
    failed = sum(s != "ok" for r in results for t in r.values() for s in t["fit_status"])
    fits = sum(len(t["fit_status"]) for r in results for t in r.values())
    print(f"\n{name} ({failed} of {fits} fits failed and are left out)")
    print(f"{'latent moved':<20}{'response':>10}{'own':>8}{'leak':>8}{'max leak':>10}{'cross-talk':>12}"
          f"  leaking most often")
    within = 0
    for latent in results[0]:
        runs = [r[latent] for r in results]

        def median(key, runs=runs):
            values = np.array([np.nan if t[key] is None else t[key] for t in runs], float)
            return np.nanmedian(values) if np.isfinite(values).any() else np.nan

        leaks = np.array([t["leak"] for t in runs], float)
        names = [t["leak_parameter"] for t in runs if t["leak_parameter"]]
        often = max(set(names), key=names.count) if names else "-"
        within += median("leak") <= 1
        print(f"z[{latent}]".ljust(20) + f"{median('response'):>10.2f}{median('own_change'):>8.1f}"
              f"{median('leak'):>8.1f}{np.nanmax(leaks):>10.1f}{median('cross_talk'):>12.2f}  {often}")
    print(f"median leak within the noise (<= 1 σ_CRB): {within} of {len(results[0])} latents")


if __name__ == "__main__":
    main()
