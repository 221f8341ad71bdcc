"""The MNIST CNN's training throughput: examples/optax_rmsprop trainer vs the same model in PyTorch.

    python -m benchmarks.trainer_throughput [--steps 64] [--rounds 3]

Same model (conv32-conv64-dense256-dense10, ReLU, 2x2 average pooling), batch
128, RMSProp (lr 1e-3, decay 0.9, eps 1e-8), float32, data already in memory,
all CPU threads for both. JAX runs the trainer's own jitted multi-step chunks
(``Trainer.train_chunk``); PyTorch a plain ``zero_grad / backward / step``
loop. Seconds per epoch are for 60,000 examples (468 steps). Writes
benchmarks/results/trainer_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np

from benchmarks import common
from examples.mnist import input_pipeline, train
from examples.mnist.config import Config

BATCH = 128


def jax_throughput(steps: int, rounds: int) -> list[float]:
    ds = input_pipeline.load_bundled_sample()
    config = Config(batch_size=BATCH, progress=False, steps_per_dispatch=8)
    mesh = train.make_mesh()
    steps_per_epoch = ds.num_train // BATCH
    trainer = train.Trainer(config, mesh, steps_per_epoch)
    data = train.put_data_on_devices(ds, mesh, 1000)
    perm = input_pipeline.epoch_permutation(jax.random.key(0), 0, ds.num_train)
    trainer.train_chunk(data, perm, 0, 8)  # compile
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for start in range(0, steps, 8):
            trainer.train_chunk(data, perm, start % (steps_per_epoch - 8), 8)
        rates.append(steps * BATCH / (time.perf_counter() - t0))
    return rates


def torch_throughput(steps: int, rounds: int) -> list[float]:
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(7 * 7 * 64, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-8)
    ds = input_pipeline.load_bundled_sample()
    images = torch.from_numpy(ds.train_images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    labels = torch.from_numpy(ds.train_labels.astype(np.int64))
    loss_fn = nn.CrossEntropyLoss()

    def step(i):
        idx = slice((i * BATCH) % (len(labels) - BATCH), None)
        x, y = images[idx][:BATCH], labels[idx][:BATCH]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for i in range(5):
        step(i)
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        rates.append(steps * BATCH / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ours = jax_throughput(args.steps, args.rounds)
    try:
        theirs = torch_throughput(args.steps, args.rounds)
    except ImportError:
        theirs = None
    m = common.machine()
    result = {
        "machine": m,
        "batch": BATCH,
        "jax_examples_per_s": ours,
        "torch_examples_per_s": theirs,
    }
    j = statistics.median(ours)
    md = [
        f"Measured {m['date']} on {m['cpus']} CPU cores, JAX {m['jax']}, torch {m.get('torch', 'n/a')}. "
        f"MNIST CNN, batch {BATCH}, float32; median of {args.rounds} rounds of {args.steps} steps.",
        "",
        "| implementation | examples/s | seconds per 60k epoch |",
        "|---|---|---|",
        f"| examples/mnist (JAX, optax_rmsprop) | {j:,.0f} | {60000 / j:.1f} |",
    ]
    if theirs:
        t = statistics.median(theirs)
        md.append(f"| PyTorch (same model and optimizer settings) | {t:,.0f} | {60000 / t:.1f} |")
        md += ["", f"JAX / PyTorch throughput: **{j / t:.2f}**"]
    print("\n".join(md))
    common.write("trainer_throughput", result, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
