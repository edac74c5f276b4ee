"""Training and encoding throughput of the CAE (images/s), CPU or CUDA.

    python benchmarks/training_speed.py [--batches 20] [--device auto]
    python benchmarks/training_speed.py --preset survey [--dataset DIR] [--galaxies 384] [--repeats 2]

``paper`` (the default) times optimiser steps at the paper's batch size (64) on random
64x64 inputs, after warm-up, and the encoder-only forward pass (inference) over 4,096 images
in batches of 32 (what galcae uses on CPU: the activations stay in cache) and 1,024.

``survey`` times the survey preset's network and loss as ``galcae train`` builds them
(:func:`galcae.train.prepare_training`, one epoch after a warm-up epoch, on a survey-config
dataset of ``--galaxies`` simulated here unless ``--dataset`` is given), side by side: on
the dataset's images with survey-v2's decoder (before issue 20), drawing on a smaller FFT
grid (``decoder_grid``), on fresh galaxies (``fresh_galaxies``, their drawing counted), and
with the preset's decoder (its residual branch at half the encoder's widths, blind to the
conditions); then where one step's time goes with each decoder.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from galcae.checkpoint import pick_device
from galcae.model import CAE, Architecture, cae_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("paper", "survey"), default="paper")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dataset", help="survey: a dataset to train on instead of simulating one")
    parser.add_argument("--galaxies", type=int, default=384, help="survey: galaxies to simulate")
    parser.add_argument("--repeats", type=int, default=2, help="survey: rounds of the variants (best kept)")
    args = parser.parse_args()
    if args.preset == "survey":
        survey(args)
    else:
        paper(args)


def paper(args) -> None:
    device = pick_device(args.device)
    torch.manual_seed(0)
    net = CAE(Architecture()).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(args.batch_size, 1, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randn(args.batch_size, 2, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        loss, _ = cae_loss(net, x, y, 1.0, 1e-3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.batches):
        step()
    sync()
    train_rate = args.batches * args.batch_size / (time.perf_counter() - start)

    net.eval()
    images = torch.rand(4096, 1, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    encode_rates = {}
    with torch.inference_mode():
        for batch in (32, 1024):  # 32: galcae's CPU inference batch; 1024: its GPU batch
            net.encode(images[:batch])
            sync()
            start = time.perf_counter()
            for i in range(0, len(images), batch):
                net.encode(images[i:i + batch])
            sync()
            encode_rates[batch] = len(images) / (time.perf_counter() - start)
    print(f"CAE (paper architecture) on {device.type}, {torch.get_num_threads()} CPU threads")
    print(f"{'measurement':<38} {'images/s':>10}")
    print(f"{'training step, batch ' + str(args.batch_size):<38} {train_rate:>10.1f}")
    for batch, rate in encode_rates.items():
        print(f"{'encoder forward, batch ' + str(batch):<38} {rate:>10.1f}")


# --- the survey network -------------------------------------------------------------------


#: The survey models' decoder up to survey-v2: the residual branch mirrors the encoder and
#: sees the conditions (a second pass for its zero point); the galaxy drawn on 4 stamps.
BEFORE = ["residual_channels=[]", "residual_conditions=true"]
#: (label, `train:` overrides of the survey preset)
VARIANTS = [
    ("survey-v2's decoder (before issue 20)", [*BEFORE, "decoder_grid=4"]),
    ("... drawn on a 3-stamp grid", [*BEFORE, "decoder_grid=3"]),
    ("... on fresh galaxies every epoch", [*BEFORE, "decoder_grid=4", "fresh_galaxies=true"]),
    ("the preset's: light residual branch, 3 stamps", []),
    ("... on fresh galaxies every epoch", ["fresh_galaxies=true"]),
]


def survey(args) -> None:
    from galcae.config import load_stage
    from galcae.dataset import Dataset
    from galcae.simulate import simulate_dataset

    base = [f"batch_size={args.batch_size}", f"device={args.device}"]
    cfg = load_stage("train", "survey", base)
    with tempfile.TemporaryDirectory() as tmp:
        if args.dataset:
            dataset = Dataset.open(args.dataset)
        else:
            sim = load_stage("simulate", "survey", [f"n_galaxies={args.galaxies}"])
            t0 = time.perf_counter()
            dataset = simulate_dataset(sim, Path(tmp) / "survey")
            print(f"simulated {args.galaxies} survey galaxies with GalSim: "
                  f"{args.galaxies / (time.perf_counter() - t0):.1f} galaxies/s")
        rates = [[] for _ in VARIANTS]
        for _ in range(args.repeats):  # rounds, so that a busy machine slows every variant alike
            for i, (_, overrides) in enumerate(VARIANTS):
                rates[i].append(epoch_rate(dataset, load_stage("train", "survey", [*base, *overrides])))
        print(f"\nsurvey network ({', '.join(map(str, cfg.channels))} channels, sersic decoder) on "
              f"{pick_device(args.device).type}, {torch.get_num_threads()} CPU threads, batch {cfg.batch_size}, "
              f"{len(dataset.usable)} galaxies; best of {args.repeats}")
        before = max(rates[0])
        print(f"{'training epoch':<46} {'images/s':>9} {'speed-up':>9}")
        for (label, _), values in zip(VARIANTS, rates):
            print(f"{label:<46} {max(values):>9.1f} {max(values) / before:>8.2f}x")
        print(f"\none step of {cfg.batch_size} galaxies, forward + backward (ms, fastest of 3):")
        breakdown(dataset, load_stage("train", "survey", [*base, *VARIANTS[0][1]]), cfg)


def epoch_rate(dataset, cfg) -> float:
    """Images/s of a training epoch of ``cfg``, after a warm-up epoch."""
    from galcae.train import prepare_training

    run = prepare_training(dataset, cfg)
    run.epoch(0)
    return run.epoch(1)["images_per_second"]


def breakdown(dataset, before, preset) -> None:
    """Where one training step's time goes, for survey-v2's decoder and the preset's."""
    columns = {"before": step_parts(dataset, before), "preset": step_parts(dataset, preset)}
    print(f"{'part':<32} {'before':>8} {'preset':>8}")
    for name in columns["before"]:
        times = {label: [] for label in columns}
        for _ in range(3):  # interleaved, the fastest of each kept: a busy machine only slows
            for label in columns:
                times[label].append(milliseconds(columns[label][name]))
        print(f"{name:<32} {min(times['before']):>8.0f} {min(times['preset']):>8.0f}")


def step_parts(dataset, cfg) -> dict:
    """The parts of a training step of ``cfg`` on a batch of ``dataset``, as callables."""
    from galcae.fresh import FreshGalaxies
    from galcae.train import prepare_training

    run = prepare_training(dataset, cfg)
    net, tensors = run.model.network, run.tensors
    batch = torch.as_tensor(run.data.train_ids[:cfg.batch_size])
    x, y, c = tensors.x[batch], tensors.y[0][batch], tensors.c[batch]
    n_sup = net.arch.n_supervised
    with torch.no_grad():
        z = net.heads(net.encoder(x), c)[0]
    z = z.requires_grad_()
    fresh = FreshGalaxies(dataset.config)
    rows = fresh.draw(cfg.batch_size, 0)
    return {
        "encoder and heads": lambda: net.heads(net.encoder(x), c)[0].sum().backward(),
        "sersic rendering": lambda: net.renderer.galaxy(z[:, :n_sup], c).sum().backward(),
        "decoder (rendering + residual)": lambda: net.decode_logits(z, c).sum().backward(),
        "whole step (loss, Adam)": lambda: step(run, x, y, c),
        "drawing the fresh galaxies": lambda: fresh.images(rows, torch.Generator().manual_seed(0)),
    }


def step(run, x, y, c) -> None:
    loss, _ = cae_loss(run.model.network, x, y, **run.tensors.terms, c=c)
    run.optimizer.zero_grad()
    loss.backward()
    run.optimizer.step()


def milliseconds(f) -> float:
    """The time of one call of ``f``, after a first one."""
    f()
    t0 = time.perf_counter()
    f()
    return 1000 * (time.perf_counter() - t0)


if __name__ == "__main__":
    main()
