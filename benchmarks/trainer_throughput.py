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


def _torch_cnn():
    from torch import nn

    return nn.Sequential(
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


def torch_throughput(steps: int, rounds: int) -> list[float]:
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = _torch_cnn()
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


def jax_time_to_accuracy(data_dir: str, target: float, epochs: int) -> dict:
    """Training seconds (no compile, no eval) until the test accuracy first reaches ``target``."""
    import tempfile

    from examples.mnist import reporting

    ds = input_pipeline.load_idx_dir(data_dir)
    with tempfile.TemporaryDirectory() as workdir:
        config = Config(epochs=epochs, workdir=workdir, progress=False, checkpoint_every=0)
        train.train_and_evaluate(config, ds, log=lambda _: None)
        records = reporting.read_metrics(workdir)
    elapsed, last_step, curve = 0.0, 0, []
    for r in records:
        elapsed += (r["step"] - last_step) * BATCH / r["examples_per_sec"]
        last_step = r["step"]
        curve.append((round(elapsed, 1), r["test_accuracy"]))
    reached = next((t for t, acc in curve if acc >= target), None)
    return {"seconds": reached, "curve": curve}


def torch_time_to_accuracy(data_dir: str, target: float, epochs: int) -> dict:
    """The same model, optimizer settings and cosine schedule in PyTorch."""
    import math

    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    ds = input_pipeline.load_idx_dir(data_dir)
    to_x = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).astype(np.float32) / 255)  # noqa: E731
    x_train, y_train = to_x(ds.train_images), torch.from_numpy(ds.train_labels.astype(np.int64))
    x_test, y_test = to_x(ds.test_images), torch.from_numpy(ds.test_labels.astype(np.int64))
    model = _torch_cnn()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-8)
    steps_per_epoch = len(y_train) // BATCH
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total))
    )
    loss_fn = nn.CrossEntropyLoss()
    elapsed, curve = 0.0, []
    for _ in range(epochs):
        perm = torch.randperm(len(y_train))
        t0 = time.perf_counter()
        model.train()
        for i in range(steps_per_epoch):
            idx = perm[i * BATCH : (i + 1) * BATCH]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
            sched.step()
        elapsed += time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            acc = float((model(x_test).argmax(1) == y_test).float().mean())
        curve.append((round(elapsed, 1), acc))
    reached = next((t for t, acc in curve if acc >= target), None)
    return {"seconds": reached, "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--time-to-99",
        metavar="MNIST_DIR",
        default=None,
        help="also train both to 99%% test accuracy on the IDX files in MNIST_DIR "
        "(3 epochs, cosine schedule), e.g. ../shared/datasets/mnist",
    )
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
    if args.time_to_99:
        runs = {"JAX": jax_time_to_accuracy(args.time_to_99, 0.99, 3)}
        if theirs:
            runs["PyTorch"] = torch_time_to_accuracy(args.time_to_99, 0.99, 3)
        result["time_to_99"] = runs
        md += [
            "",
            "Time to 99% test accuracy on full MNIST (training seconds, compile and "
            "evaluation excluded; cosine schedule over 3 epochs):",
            "",
            "| implementation | seconds to 99% | test accuracy after each epoch (cumulative s) |",
            "|---|---|---|",
        ]
        for name, run in runs.items():
            curve = ", ".join(f"{100 * a:.2f}% ({t} s)" for t, a in run["curve"])
            md.append(
                f"| {name} | {run['seconds'] if run['seconds'] is not None else 'not reached'} | {curve} |"
            )
    print("\n".join(md))
    common.write("trainer_throughput", result, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
