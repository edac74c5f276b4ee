"""Training and encoding throughput of the paper's CAE (images/s), CPU or CUDA.

    python benchmarks/training_speed.py [--batches 20] [--device auto]

Times optimiser steps at the paper's batch size (64) on random 64x64 inputs, after
warm-up, and the encoder-only forward pass (inference) over 4,096 images in batches of
32 (what galcae uses on CPU: the activations stay in cache) and 1,024.
"""

import argparse
import time

import torch

from galcae.checkpoint import pick_device
from galcae.model import CAE, Architecture, cae_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
