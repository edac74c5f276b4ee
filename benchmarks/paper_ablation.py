"""Why the paper's network does or does not show Figs. 2-4: one setting changed at a time.

Every variant is the `paper` preset trained on the same 1,000 galaxies with the same seed
(`galcae demo`'s data and controlled sets), changed by one `train:` override, or trained on
other data (centred galaxies) with or without one more change; then evaluated as the demo
evaluates (no classical fits of the test galaxies; the traversals of five test galaxies
re-measured by the classical fit unless --no-remeasure). Runs already in OUT are reused,
so the table can be built over several sessions (`--reevaluate` evaluates them again).

    python benchmarks/paper_ablation.py --out ablation                    # every variant
    python benchmarks/paper_ablation.py --out ablation --variants "paper preset" "lambda_l1=0.1"
    python benchmarks/paper_ablation.py --out ablation --epochs 20 --no-remeasure   # a quick look

Columns: R² of flux and r½ (the CAE's one latent each; PCA-64's beside the baseline).
Fig. 3: how far the other latent moves over each controlled set, in its own test-set
standard deviations (target < 0.3), and in brackets how far it would seem to move from the
stamps' noise alone (95th percentile, no trend); the power law k of the predicted r½ over the flux sweep
(k = 0 flux-independent, k = -0.5 a radius read off the surface brightness alone); the
largest miss of the predicted r½ (flux) from its true, fixed value over the bins of the flux
(r½) sweep, in Cramér-Rao bounds at that bin (an efficient, unbiased estimator: about 0.3,
its bin median's noise; many bounds: the range is the estimator's error, not the data's); up to
which r½ z[r½] rises monotonically (the Cramér-Rao limit in the header). Fig. 4: median
response (>= 0.7) and cross-talk (<= 0.3) of each latent's traversal. Fig. 2: R² of the
reconstructions' g1, g2 at S/N > 30 (>= 0.7) and their chi² per pixel at S/N > 100.
Training seconds.
"""

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from galcae.card import resolve_model
from galcae.checkpoint import load_model
from galcae.config import load_stage
from galcae.dataset import Dataset
from galcae.demo import DEMO_EPOCHS, SWEPT, simulate_paper_sets
from galcae.evaluate import evaluate_run
from galcae.evaluate.claims import binned_medians, sweep_claims
from galcae.simulate import simulate_dataset
from galcae.train import train_model

#: The survey models' physical decoder, and the seven parameters it draws a galaxy from.
PHYSICAL = ["decoder=sersic", "supervised=[flux,half_light_radius,sersic_n,g1,g2,x,y]"]
#: The survey preset's target scaling: flux, r½ and n standardised in log10.
SURVEY_LOG_SCALED = "log_scaled=[flux,half_light_radius,sersic_n]"
#: The demo's seed and two more, as (name suffix, train overrides): the training's own scatter.
THREE_SEEDS = (("", []), (", seed 1", ["seed=1"]), (", seed 2", ["seed=2"]))
#: One `train:` change each, from the candidates of the issue: the loss weights, the pixel
#: stretch, the target scaling, augmentation, the residual-latent dropout, training length.
#: (The latent heads are already the appendix's: z_phys linear, z_res ReLU.)
VARIANTS = {
    "paper preset": [],
    "lambda_l1=0.1": ["lambda_l1=0.1"],
    "lambda_l1=1": ["lambda_l1=1"],
    "lambda_phys=1": ["lambda_phys=1"],
    "lambda_phys=100": ["lambda_phys=100"],
    "linear stretch": ["pixel_stretch=linear"],
    "log10 flux target": ["log_scaled=[flux,half_light_radius]"],
    "no augmentation": ["augment=false"],
    "res_dropout=0.5": ["res_dropout=0.5"],
    "100 epochs": ["epochs=100"],
    # Not a setting of the paper's: new galaxies every epoch (the PyTorch renderer), the same
    # number per epoch. Tests whether 909 training galaxies are too few to tell a galaxy's
    # size from its surface brightness.
    "fresh galaxies": ["fresh_galaxies=true"],
    # Not the paper's architecture: the smallest changes to it. A linear head over the
    # flattened local features cannot form a ratio such as light over peak; a hidden layer can.
    "head_hidden=256": ["head_hidden=256"],
    "channels=[32,64,128]": ["channels=[32,64,128]"],
    # Not the paper's decoder: the supervised latents drawn as the Sérsic galaxy they describe
    # (through the set's one PSF), the paper's decoder adding what the free latents hold. It
    # draws a whole galaxy, so all seven of its parameters are supervised (57 latents free).
    "physical decoder": PHYSICAL,
}

#: Other data than the demo's: `simulate:` overrides, each on its own 1,000 galaxies (same
#: seed), evaluated on the same controlled sets. Table 1 puts the centre anywhere on the
#: 64-pixel stamp; a detection's cutout is centred to a pixel or two.
CENTRED = ["ranges.x=[30,34]", "ranges.y=[30,34]"]
#: As the survey models' training sets draw them: as many bright and compact galaxies as
#: faint and large ones (each decade of flux and size alike).
LOG_UNIFORM = ["log_uniform=[flux,half_light_radius]"]
DATASETS = {
    "centred galaxies": CENTRED,
    "centred, log-uniform flux and r½": CENTRED + LOG_UNIFORM,
    "log-uniform flux and r½": LOG_UNIFORM,
}
#: Variants on such data: (dataset, `train:` overrides). With centred galaxies the best of
#: the one-change runs are tried again on top.
DATA_VARIANTS = {
    "centred galaxies": ("centred galaxies", []),
    "centred + fresh galaxies": ("centred galaxies", ["fresh_galaxies=true"]),
    "centred + 100 epochs": ("centred galaxies", ["epochs=100"]),
    "centred + head_hidden=256": ("centred galaxies", ["head_hidden=256"]),
    "centred + channels=[32,64,128]": ("centred galaxies", ["channels=[32,64,128]"]),
    "centred, log-uniform flux and r½": ("centred, log-uniform flux and r½", []),
    "log-uniform flux and r½": ("log-uniform flux and r½", []),
    # Fig. 4's traversal of z[r½] changes the size only if the decoder draws the size from
    # it: dropping the free latents at the decoder's input makes it (not the paper's).
    "centred + res_dropout=0.5": ("centred galaxies", ["res_dropout=0.5"]),
    "centred, log-uniform + res_dropout=0.5": ("centred, log-uniform flux and r½", ["res_dropout=0.5"]),
    "centred, log-uniform + res_dropout=0.8": ("centred, log-uniform flux and r½", ["res_dropout=0.8"]),
    "centred, log-uniform + res_dropout=0.5, 100 epochs": ("centred, log-uniform flux and r½",
                                                           ["res_dropout=0.5", "epochs=100"]),
    "centred, log-uniform + res_dropout=0.8, 100 epochs": ("centred, log-uniform flux and r½",
                                                           ["res_dropout=0.8", "epochs=100"]),
    # The shapes first: the free latents are dropped only in the later epochs.
    "centred, log-uniform + res_dropout=0.8 from half-way": ("centred, log-uniform flux and r½",
                                                             ["res_dropout=0.8", "res_dropout_from=0.5"]),
    "centred, log-uniform + res_dropout=0.8 from 30 %": ("centred, log-uniform flux and r½",
                                                         ["res_dropout=0.8", "res_dropout_from=0.3"]),
    # Each free latent dropped on its own: no one of them can be relied on for the size,
    # while the shapes may be held by several.
    "centred, log-uniform + dropout 0.5 on each free latent": ("centred, log-uniform flux and r½",
                                                               ["res_dropout=0.5", "res_dropout_each=true"]),
    "centred + dropout 0.5 on each free latent": ("centred galaxies", ["res_dropout=0.5", "res_dropout_each=true"]),
    "centred + physical decoder": ("centred galaxies", PHYSICAL),
    "centred, log-uniform + physical decoder": ("centred, log-uniform flux and r½", PHYSICAL),
    "centred, log-uniform + physical decoder, log10 flux target": (
        "centred, log-uniform flux and r½", PHYSICAL + ["log_scaled=[flux,half_light_radius]"]),
    "centred, log-uniform + physical decoder, 100 epochs": ("centred, log-uniform flux and r½",
                                                            PHYSICAL + ["epochs=100"]),
    "centred, log-uniform + physical decoder, channels=[32,64,128]": (
        "centred, log-uniform flux and r½", PHYSICAL + ["channels=[32,64,128]"]),
    "centred, log-uniform + physical decoder, head_hidden=256": (
        "centred, log-uniform flux and r½", PHYSICAL + ["head_hidden=256"]),
    "centred, log-uniform + physical decoder, head_hidden=256, 100 epochs": (
        "centred, log-uniform flux and r½", PHYSICAL + ["head_hidden=256", "epochs=100"]),
    # The same with another seed (the network's initial weights and batch order): how much of
    # a difference between rows is the training's own scatter.
    "centred, log-uniform + physical decoder, head_hidden=256, seed 1": (
        "centred, log-uniform flux and r½", PHYSICAL + ["head_hidden=256", "seed=1"]),
    "centred, log-uniform + physical decoder, head_hidden=256, seed 2": (
        "centred, log-uniform flux and r½", PHYSICAL + ["head_hidden=256", "seed=2"]),
    # The nearest setting on new galaxies every epoch: whether what it misses of Fig. 3 is
    # the 909 training galaxies' doing.
    "centred, log-uniform + physical decoder, head_hidden=256, fresh galaxies": (
        "centred, log-uniform flux and r½", PHYSICAL + ["head_hidden=256", "fresh_galaxies=true"]),
    # ... and trained longer: with fresh galaxies the training and test losses stay equal
    # (it underfits), so more steps, not more galaxies, is what the encoder may lack.
    "centred, log-uniform + physical decoder, head_hidden=256, fresh galaxies, 200 epochs": (
        "centred, log-uniform flux and r½", PHYSICAL + ["head_hidden=256", "fresh_galaxies=true", "epochs=200"]),
    # ... and with the survey preset's target scaling (flux, r½ and n in log10: the loss
    # weighs a relative error alike at every flux), at three seeds.
    **{f"centred, log-uniform + physical decoder, head_hidden=256, log10 targets{seed}": (
        "centred, log-uniform flux and r½", PHYSICAL + ["head_hidden=256", SURVEY_LOG_SCALED, *extra])
       for seed, extra in THREE_SEEDS},
    # ... and with the survey preset's loss on the means: a variance head and the beta-NLL
    # (beta 0.5), which weighs each galaxy's residual by 1/sigma, so that the well-measured,
    # bright galaxies where Fig. 3's misses are count for more; with the preset's log10
    # targets and without, at three seeds.
    **{f"centred, log-uniform + physical decoder, head_hidden=256, beta-NLL{targets}{seed}": (
        "centred, log-uniform flux and r½",
        PHYSICAL + ["head_hidden=256", "predict_variance=true", "nll_beta=0.5", *scaling, *extra])
       for targets, scaling in (("", []), (", log10 targets", [SURVEY_LOG_SCALED]))
       for seed, extra in THREE_SEEDS},
    # ... and with the survey encoder's third block too (the survey preset's network on the
    # paper's galaxies, less its conditions), at three seeds: whether the capacity the
    # survey models have is what holds both of Fig. 3's sweeps at once.
    **{f"centred, log-uniform + physical decoder, head_hidden=256, channels=[32,64,128]{seed}": (
        "centred, log-uniform flux and r½", PHYSICAL + ["head_hidden=256", "channels=[32,64,128]", *extra])
       for seed, extra in THREE_SEEDS},
    # Everything that helped at once: how far the paper's network (plus a block) can get.
    "centred + channels + fresh, 100 epochs": ("centred galaxies", ["channels=[32,64,128]",
                                                                     "fresh_galaxies=true", "epochs=100"]),
}


def slug(name: str) -> str:
    return name.replace(" ", "_").replace("=", "-")


def variant_dataset(out: Path, data: str | None, workers: int) -> Path:
    """The demo's dataset (``data`` None), or the one of :data:`DATASETS` (simulated once)."""
    if data is None:
        return out / "dataset"
    dataset = out / f"dataset-{slug(data)}"
    if not dataset.exists():
        simulate_dataset(load_stage("simulate", "paper", DATASETS[data]), dataset, workers=workers)
    return dataset


EVALUATED = ("r2", "controlled", "reconstruction", "traversal_claims")


def run_variant(out: Path, sweeps, name: str, epochs: int, remeasure: bool, workers: int,
                reevaluate: bool = False) -> dict:
    """Train and evaluate one variant (or read its saved result; ``reevaluate``: evaluate its
    saved run again, as the evaluation is now, keeping its training time)."""
    run = out / "runs" / slug(name)
    result = run / "ablation.json"
    data, overrides = DATA_VARIANTS.get(name, (None, VARIANTS.get(name)))
    if result.exists() and not reevaluate:
        return json.loads(result.read_text())
    dataset = variant_dataset(out, data, workers)
    if result.exists():
        summary = json.loads(result.read_text())
    else:
        cfg = load_stage("train", "paper", [f"epochs={epochs}", *overrides])
        start = time.perf_counter()
        train_model(dataset, run, cfg, overwrite=True)
        summary = {"name": name, "overrides": overrides, "simulate": DATASETS.get(data, []), "epochs": cfg.epochs,
                   "train_seconds": time.perf_counter() - start}
    start = time.perf_counter()
    metrics = evaluate_run(run, dataset, sweeps, classical=0, remeasure=remeasure, workers=workers)
    summary.update({k: metrics.get(k) for k in EVALUATED}, evaluate_seconds=time.perf_counter() - start,
                   evaluated=time.strftime("%Y-%m-%d"))
    result.write_text(json.dumps(summary, indent=2))
    return summary


#: The shipped models' Fig. 3 sweeps, for comparison: the survey preset at one seeing
#: (Moffat FWHM 0.8", beta 3.5); the flux sweep at r½ 1" over 1,000-100,000 ADU, the r½
#: sweep at 10,000 ADU over the survey's 0.15-3".
SURVEY_SEEING = ["psf.fwhm=0.8", "psf.beta=3.5"]
SURVEY_SWEEPS = {"flux": ["ranges.flux=[1000,100000]"], "half_light_radius": []}


def shipped_sweeps(out: Path, names: list[str], workers: int) -> list[str]:
    """Fig. 3's numbers of shipped models on survey stamps, as table rows: over the flux
    sweep, the range of z[r½] in its standard deviation over 400 random survey galaxies at
    the same seeing, the power law k of the predicted r½, and that r½ at the faintest and
    brightest; over the r½ sweep, the range of z[flux] and the predicted flux at the
    smallest and largest."""
    random_path = out / "survey_random"
    if not random_path.exists():
        simulate_dataset(load_stage("simulate", "survey", [*SURVEY_SEEING, "n_galaxies=400", "seed=11"]),
                         random_path, workers=workers)
    sweeps = {}
    for parameter, ranges in SURVEY_SWEEPS.items():
        path = out / f"survey_sweep_{parameter}"
        if not path.exists():
            simulate_dataset(load_stage("simulate", "survey", [*SURVEY_SEEING, *ranges, "n_galaxies=200",
                                                               f"sweep.parameter={parameter}"]),
                             path, workers=workers)
        sweeps[parameter] = Dataset.open(path)
    random = Dataset.open(random_path)
    rows = []
    for name in names:
        model = load_model(resolve_model(name), device="cpu")
        test = _predict(model, random)
        std = {n: float(test["latents"][:, k].std()) for k, n in enumerate(model.supervised)}
        cells = []
        for parameter, other in (("flux", "half_light_radius"), ("half_light_radius", "flux")):
            sweep = sweeps[parameter]
            on_sweep = _predict(model, sweep)
            latents = {n: on_sweep["latents"][:, k] for k, n in enumerate(model.supervised) if n in SWEPT}
            values = sweep.params[parameter][sweep.usable]
            numbers = sweep_claims(values, latents, parameter, std, on_sweep)["other"][other]
            _, predicted, _ = binned_medians(values, on_sweep[other])
            unit = "″" if other == "half_light_radius" else " ADU"
            cells += [flatness(numbers)] + (
                [f"{numbers['power_law_index']:.2f}"] if parameter == "flux" else []) + [
                f"{predicted[0]:.3g}{unit} → {predicted[-1]:.3g}{unit}"]
        rows.append(f"| `{name}` (shipped) | " + " | ".join(cells) + " |")
    return rows


def _predict(model, data: Dataset) -> dict:
    """A conditioned model's predictions on a dataset's usable stamps, told their conditions."""
    ok = data.usable
    conditions = {k: data.params[k][ok] for k in model.conditions if k in data.params}
    return model.predict(data.load_images(ok), conditions)


def flatness(numbers: dict) -> str:
    """A Fig. 3 range, and in brackets the range the stamps' noise alone gives."""
    value, noise = numbers.get("range_in_std"), numbers.get("noise_range_in_std")
    return ("–" if value is None else f"{value:.2f}") + ("" if noise is None else f" ({noise:.2f})")


def row(s: dict) -> list[str]:
    r2 = s["r2"]["cae"]
    flux_sweep = s["controlled"]["flux"]["claims"]
    radius_sweep = s["controlled"]["half_light_radius"]["claims"]
    shape = s["reconstruction"]["shape"]
    chi2 = s["reconstruction"]["chi2_per_pixel"][-1]["chi2_per_pixel"]
    t = s.get("traversal_claims") or {}

    def median(name, key):
        v = t.get(name, {}).get(key)
        return "–" if v is None else f"{v:.2f}"

    def num(v, fmt=".2f"):
        return "–" if v is None else format(v, fmt)

    # The paper's pair: over each sweep, how far the other one of z[flux] and z[r½] moves
    # (a model with more supervised latents has more "others": n follows r½, as it should).
    radius_on_flux = flux_sweep.get("other", {}).get("half_light_radius", {})
    flux_on_radius = radius_sweep.get("other", {}).get("flux", {})
    return [s["name"], num(r2["flux"], ".3f"), num(r2["half_light_radius"], ".3f"),
            flatness(radius_on_flux), num(radius_on_flux.get("power_law_index")),
            num(radius_on_flux.get("largest_miss_in_crb"), ".1f"),
            flatness(flux_on_radius), num(flux_on_radius.get("largest_miss_in_crb"), ".1f"),
            num(radius_sweep["own_monotonic_up_to"]),
            median("flux", "response_median"), median("flux", "cross_talk_median"),
            median("half_light_radius", "response_median"), median("half_light_radius", "cross_talk_median"),
            num(shape["r2_g1"]), num(shape["r2_g2"]), num(chi2, ".1f"), f"{s['train_seconds']:.0f}"]


HEADER = ["variant", "R² flux", "R² r½", "F3 flux: z[r½] range (noise)", "F3 flux: r½ ∝ flux^k, k",
          "F3 flux: r½ miss (CRB)", "F3 r½: z[flux] range (noise)", "F3 r½: flux miss (CRB)",
          "F3 z[r½] rises to", "F4 z[flux] resp", "F4 z[flux] xtalk", "F4 z[r½] resp", "F4 z[r½] xtalk",
          "F2 g1 R²", "F2 g2 R²", "F2 χ²/px S/N>100", "train s"]


def save_table(path: Path, results: list[dict], epochs: int) -> None:
    """The table as JSON: header, rows (without the training times, which depend on what else
    ran), and when the rows were evaluated, at which commit and on what machine it was made."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    dates = sorted({s.get("evaluated", "before 2026-12-04") for s in results})
    path.write_text(json.dumps({
        "command": "python benchmarks/paper_ablation.py --out DIR --variants ... --save " + path.name,
        "measured": " to ".join(dict.fromkeys([dates[0], dates[-1]])), "commit": commit,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"PyTorch {torch.__version__}",
        "epochs": epochs, "header": HEADER[:-1], "rows": [row(s)[:-1] for s in results]},
        indent=1, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="data, runs and results (reused)")
    parser.add_argument("--variants", nargs="*", default=[*VARIANTS, *DATA_VARIANTS],
                        choices=[*VARIANTS, *DATA_VARIANTS])
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help="the demo's by default")
    parser.add_argument("--no-remeasure", action="store_true", help="skip Fig. 4's classical fits")
    parser.add_argument("--save", type=Path, metavar="JSON",
                        help="also write the table, with its date, commit and machine, as JSON (the demo's "
                             "report shows galcae/data/paper_ablation.json)")
    parser.add_argument("--reevaluate", action="store_true",
                        help="evaluate the variants' saved runs again (after a change to the evaluation)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shipped", nargs="*", default=[], metavar="MODEL",
                        help="also the sweeps of shipped models on survey stamps (e.g. survey survey-v1)")
    args = parser.parse_args()
    if not args.variants:
        parser.error("--variants: name at least one variant")
    sweeps = simulate_paper_sets(args.out, args.workers) if not (args.out / "dataset").exists() else \
        [args.out / f"sweep_{parameter}" for parameter in SWEPT]
    results = [run_variant(args.out, sweeps, name, args.epochs, not args.no_remeasure, args.workers, args.reevaluate)
               for name in args.variants]
    limit = results[0]["controlled"]["half_light_radius"]["claims"].get("resolvable_up_to")
    pca = results[0]["r2"]["pca_all"]
    print(f"Paper preset, one change each (or centred galaxies, plus one); {args.epochs} epochs unless "
          "the variant says, on 1,000 galaxies "
          f"(PCA-64 + linear: R² flux {pca['flux']:.3f}, r½ {pca['half_light_radius']:.3f}; "
          f"the Cramér-Rao bound tells the r½ sweep's bins apart up to {limit:.2f}\")")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for s in results:
        print("| " + " | ".join(row(s)) + " |")
    if args.save:
        save_table(args.save, results, args.epochs)
    if args.shipped:
        print("\nThe shipped models' sweeps on survey stamps (Moffat 0.8″; each latent's std over 400 random "
              "survey galaxies at that seeing)")
        print("| model | F3 flux sweep: z[r½] range (noise) | k | predicted r½, faintest → brightest bin | "
              "F3 r½ sweep: z[flux] range (noise) | predicted flux, smallest → largest bin |")
        print("|---|---|---|---|---|---|")
        print("\n".join(shipped_sweeps(args.out, args.shipped, args.workers)))


if __name__ == "__main__":
    main()
