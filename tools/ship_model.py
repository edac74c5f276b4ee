"""Put a trained run into the package as a named model (``galcae infer --model NAME``).

    python tools/ship_model.py RUN DATASET HELDOUT NAME [--bound 600 --workers 2]

1. rounds the weights to float16 (half the size; the shipped model is what is evaluated);
2. recomputes the error model on the run's own test split of DATASET (held-out scatter,
   variance-head recalibration, training ranges) with the current code; ``--calibration
   SET`` fits the recalibration on SET instead (a larger held-out simulation: bins of
   1,000 galaxies rather than 300); with ``--refine-snr S --refine-calibration N`` also
   the recalibration of refined rows' errors, on the first N galaxies of SET without a
   neighbour refined above S (a neighbour's own uncertainty is added after it). A model
   trained with ``mask_neighbours`` is measured on stamps masked as it saw them;
   ``--model-error JSON`` adds the refined errors' model-error floors (measured on realistic
   galaxies by ``benchmarks/realistic_psf.py --fit-floors``);
3. evaluates on HELDOUT, a dataset the model never saw (``galcae evaluate``: R², coverage,
   efficiency vs the Cramér–Rao bound, re-measured traversals) into RUN/eval/;
4. writes ``galcae/models/NAME/``: model.safetensors (float16), model.json (with the
   model card of ``--card CARD.yaml``), report.html (the evaluation, under the card).
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from galcae.card import ModelCard
from galcae.checkpoint import META, load_model, save_model
from galcae.config import read_yaml
from galcae.dataset import Dataset
from galcae.demo import calibration_text, claims_text, comparison_table, disentanglement_text, r2_table
from galcae.estimate.cae import measure
from galcae.estimate.refine import calibrate_fit_errors
from galcae.evaluate import evaluate_run
from galcae.train import MASK_STREAM, SPLIT, as_the_model_saw_them, calibrate_variance, conditioning_inputs, error_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("dataset", type=Path, help="the dataset the run was trained on")
    parser.add_argument("heldout", type=Path, help="a dataset the run never saw")
    parser.add_argument("name")
    parser.add_argument("--bound", type=int, default=600, help="galaxies bounded for efficiency")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--test-fraction", type=float, default=0.75)
    parser.add_argument("--no-remeasure", action="store_true", help="skip the traversal fits")
    parser.add_argument("--refine-snr", type=float, default=None,
                        help="also score the CAE refined by the classical fit above this S/N")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="a dataset (unseen in training and evaluation) to fit the recalibration on")
    parser.add_argument("--refine-calibration", type=int, default=0, metavar="N",
                        help="refine the first N galaxies of --calibration above --refine-snr and "
                             "recalibrate the fit's errors on them")
    parser.add_argument("--model-error", type=Path, default=None, metavar="JSON",
                        help="the refined errors' model-error floors: a JSON file holding the "
                             "`refine_model_error` section that `benchmarks/realistic_psf.py --fit-floors` "
                             "prints (with a `calibrated_on` sentence added)")
    parser.add_argument("--card", type=Path, default=None,
                        help="YAML with the model card's what / trained / validated / not_trusted "
                             "sentences (by command, not by path), shown at the top of report.html")
    args = parser.parse_args()
    if args.refine_calibration and (args.calibration is None or args.refine_snr is None):
        parser.error("--refine-calibration needs --calibration and --refine-snr")

    model = load_model(args.run, device="cpu")
    with torch.no_grad():
        for p in model.network.parameters():
            p.copy_(p.half().float())
    dataset = Dataset.open(args.dataset)
    split = json.loads((args.run / SPLIT).read_text())
    train, test = split["train"], split["test"]
    images = dataset.load_images(test)
    conditions = conditioning_inputs(dataset, images, model.conditions, test)  # measured as read, as infer does
    as_the_model_saw_them(model, images, np.random.default_rng([len(test), MASK_STREAM]))
    parts = [conditioning_inputs(dataset, dataset.load_images(train[i:i + 4096]), model.conditions,
                                 train[i:i + 4096]) for i in range(0, len(train), 4096)]  # in blocks
    train_conditions = {n: np.concatenate([p[n] for p in parts]) for n in model.conditions}
    targets = model.scaling.to_latent({n: dataset.params[n][test] for n in model.supervised})
    model.meta.update(error_model(model, images, targets,
                                  {n: dataset.params[n][train] for n in model.supervised},
                                  conditions, train_conditions))
    for stale in ("refine_calibration", "refine_calibration_set", "refine_model_error"):  # set again below, or not
        model.meta.pop(stale, None)
    if args.calibration is not None:
        calibration = Dataset.open(args.calibration)
        ids = calibration.usable
        images = calibration.load_images(ids)
        conditions = conditioning_inputs(calibration, images, model.conditions, ids)
        raw = images.copy()  # the refinement fits the stamps as read, with the neighbours' pixels masked
        as_the_model_saw_them(model, images, np.random.default_rng([len(ids), MASK_STREAM]))
        model.meta["variance_calibration"] = calibrate_variance(
            model, images, model.scaling.to_latent({n: calibration.params[n][ids] for n in model.supervised}),
            conditions, per_bin=1000)
        model.meta["variance_calibration_set"] = {"path": str(args.calibration), "n_galaxies": len(ids)}
        if args.refine_calibration:  # the first N isolated galaxies of the stamps at hand
            alone = np.flatnonzero(calibration.params.get("nb_flux", np.zeros(len(calibration)))[ids] <= 0)
            keep = alone[:args.refine_calibration]
            ids, images, raw = ids[keep], images[keep], raw[keep]
            conditions = {k: v[keep] for k, v in conditions.items()}
            model.card = ModelCard.from_dict(model.meta)  # the recalibrated variance head measures
            fitted, refined = calibrate_fit_errors(
                model.card.training_set, raw, conditions, measure(model, images, conditions),
                {n: calibration.params[n][ids] for n in model.supervised}, args.refine_snr, args.workers)
            model.meta["refine_calibration"] = fitted.to_dict()
            model.meta["refine_calibration_set"] = {"path": str(args.calibration), "n_galaxies": len(ids),
                                                    "refined": refined, "min_snr": args.refine_snr}
    if args.model_error is not None:
        model.meta["refine_model_error"] = json.loads(args.model_error.read_text())["refine_model_error"]
    model.meta["shipped"] = {"name": args.name, "weights": "float16", "report": "report.html",
                             **({"card": read_yaml(args.card)} if args.card else {})}
    save_model(args.run, model)  # the float16-rounded weights, recalibrated; the card for the report

    metrics = evaluate_run(args.run, args.heldout, classical=0, bound=args.bound,
                           workers=args.workers, test_fraction=args.test_fraction,
                           remeasure=not args.no_remeasure, refine_snr=args.refine_snr)
    for text in (r2_table(metrics), comparison_table(metrics), calibration_text(metrics),
                 disentanglement_text(metrics), claims_text(metrics)):
        print(text, end="\n\n")

    out = Path(__file__).resolve().parents[1] / "galcae" / "models" / args.name
    out.mkdir(parents=True, exist_ok=True)
    model.network.half()
    save_model(out, model)
    shutil.copy(args.run / "eval" / "report.html", out / "report.html")
    print(f"shipped {out} ({(out / 'model.safetensors').stat().st_size / 1e6:.1f} MB weights); "
          f"{out / META}")


if __name__ == "__main__":
    main()
