"""Accuracy reached in a fixed wall-clock budget of training, per network variant.

    python benchmarks/training_budget.py --train DATASET --test DATASET --out DIR \
        [--minutes 20] [--threads 1] [--preset realistic] [--variants ...]

Each variant is a set of ``train:`` overrides on the preset. Its speed is probed first
(30 optimiser steps on the training set, after 5 of warm-up); the run then gets as many
whole epochs as the budget allows at that speed (the cosine schedule needs its length up
front), trains with :func:`galcae.train.train_model` and is scored on ``--test``, a dataset
it never saw, measured as ``galcae infer`` would (stamps masked as the model saw them, the
noise measured on them): R² and the robust scatter (``mad_std``) of the relative flux and
half-light-radius errors and of g1; and the reconstructions' loss (BCE) on the training
set's held-out split, which the residual branch shapes. The variants run one after the other; to run them side
by side on two cores, start one process per variant with ``--threads 1``.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = {
    # The survey models' decoder up to survey-v2 (before issue 20).
    "today": ["residual_channels=[]", "residual_conditions=true", "decoder_grid=4"],
    # The presets' since: the residual branch at half the encoder's widths, blind to the
    # conditions (its zero point one image per batch, not a second pass), the galaxy drawn
    # on a 3-stamp grid.
    "light residual": ["residual_channels=[16,32,64]", "residual_conditions=false", "decoder_grid=3"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="training dataset (galcae simulate)")
    parser.add_argument("--test", required=True, help="scoring dataset, other galaxies")
    parser.add_argument("--out", required=True, help="runs and results")
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per variant")
    parser.add_argument("--epochs", type=int, help="a fixed number of epochs instead of the budget")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preset", default="realistic")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        row = run_variant(name, args, out)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    print_table(out / "results.jsonl")


def run_variant(name: str, args, out: Path) -> dict:
    import dataclasses

    from galcae.checkpoint import load_model
    from galcae.config import load_stage
    from galcae.dataset import Dataset
    from galcae.train import train_model

    cfg = load_stage("train", args.preset, [*VARIANTS[name], f"seed={args.seed}", "device=cpu"])
    dataset = Dataset.open(args.train)
    rate = probe_rate(dataset, cfg)
    n_train = len(dataset.usable) * (1 - cfg.test_fraction)
    epochs = args.epochs or max(1, int(args.minutes * 60 * rate / n_train))
    cfg = dataclasses.replace(cfg, epochs=epochs)
    run = out / f"{name.replace(' ', '_')}-seed{args.seed}-{epochs}ep"
    t0 = time.perf_counter()
    train_model(args.train, run, cfg, overwrite=True)
    seconds = time.perf_counter() - t0
    model = load_model(run, device="cpu")
    last = json.loads((run / "history.json").read_text())[-1]  # the reconstructions' loss on the held-out split
    return {"variant": name, "seed": args.seed, "threads": args.threads, "probe_images_per_s": round(rate, 1),
            "epochs": epochs, "train_s": round(seconds), "test_bce": round(last["test_bce"], 5),
            **score(model, Dataset.open(args.test))}


def probe_rate(dataset, cfg, steps: int = 30, warm: int = 5) -> float:
    """Training images/s of ``cfg`` on ``dataset``: whole optimiser steps, timed after a warm-up."""
    from galcae.model import cae_loss
    from galcae.train import prepare_training

    run = prepare_training(dataset, cfg)
    net, tensors = run.model.network, run.tensors
    net.train()
    ids = torch.as_tensor(run.data.train_ids)
    for i in range(warm + steps):
        if i == warm:
            t0 = time.perf_counter()
        batch = ids[torch.randint(len(ids), (cfg.batch_size,))]
        loss, _ = cae_loss(net, tensors.x[batch], tensors.y[0][batch], **tensors.terms,
                           c=None if tensors.c is None else tensors.c[batch])
        run.optimizer.zero_grad()
        loss.backward()
        run.optimizer.step()
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def score(model, test) -> dict:
    """R² and robust scatter of the model's estimates on the ``test`` dataset's usable stamps."""
    from astropy.stats import mad_std

    from galcae.conditions import stamp_noise_sigma
    from galcae.estimate.cae import measure
    from galcae.train import as_the_model_saw_them

    ids = test.usable
    images = as_the_model_saw_them(model, test.load_images(ids), np.random.default_rng(7))
    conditions = {k: test.params[k][ids] for k in model.conditions if k != "noise_sigma"}
    conditions["noise_sigma"] = stamp_noise_sigma(images)
    est = measure(model, images, conditions)
    truth = {k: test.params[k][ids] for k in ("flux", "half_light_radius", "g1", "g2", "sersic_n")}

    def r2(a, b):
        return 1 - np.sum((a - b) ** 2) / np.sum((b - b.mean()) ** 2)

    result = {f"r2_log_{k}": r2(np.log10(est[k]), np.log10(truth[k])) for k in ("flux", "half_light_radius")}
    result.update({f"r2_{k}": r2(est[k], truth[k]) for k in ("sersic_n", "g1", "g2")})
    result.update({f"scatter_{k}": mad_std(est[k] / truth[k] - 1) for k in ("flux", "half_light_radius")})
    result["scatter_g1"] = mad_std(est["g1"] - truth["g1"])
    return {k: round(float(v), 4) for k, v in result.items()} | {"n_test": len(ids)}


def print_table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    keys = ["variant", "seed", "threads", "probe_images_per_s", "epochs", "train_s", "test_bce", "r2_log_flux",
            "r2_log_half_light_radius", "r2_sersic_n", "r2_g1", "r2_g2", "scatter_flux",
            "scatter_half_light_radius", "scatter_g1"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()
