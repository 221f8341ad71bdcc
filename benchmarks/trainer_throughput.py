"""The MNIST CNN's training throughput: examples/optax_rmsprop trainer vs the same model in PyTorch.

    python -m benchmarks.trainer_throughput [--steps 64] [--rounds 5] [--time-to-99 MNIST_DIR]

Same model (conv32-conv64-dense256-dense10, ReLU, 2x2 average pooling), batch
128, RMSProp (lr 1e-3, decay 0.9, eps 1e-8), float32, data already in memory,
all CPU threads for both. JAX runs the trainer's own jitted multi-step chunks
(``Trainer.train_chunk``) with the trainer's XLA:CPU flag
(``examples/mnist/xla_cpu.py``); PyTorch a plain ``zero_grad / backward /
step`` loop. Rounds alternate between the two, and the ratio is the median of
the per-round ratios. A child process measures the trainer once more with
XLA's defaults (``--no-cpu-tuning``) to show what the flag is worth. Seconds
per epoch are for 60,000 examples. Writes
benchmarks/results/trainer_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from benchmarks import common
from examples.mnist import input_pipeline, train, xla_cpu
from examples.mnist.config import Config

BATCH = 128
SETTLE_S = 0.5  # let the other library's worker threads go idle between rounds


def jax_round(steps: int) -> Callable[[], float]:
    """A function that trains ``steps`` steps with the trainer and returns examples/s."""
    import jax

    ds = input_pipeline.load_bundled_sample()
    config = Config(batch_size=BATCH, progress=False, steps_per_dispatch=8)
    mesh = train.make_mesh()
    steps_per_epoch = ds.num_train // BATCH
    trainer = train.Trainer(config, mesh, steps_per_epoch)
    data = train.put_data_on_devices(ds, mesh, 1000)
    perm = input_pipeline.epoch_permutation(jax.random.key(0), 0, ds.num_train)
    trainer.train_chunk(data, perm, 0, 8)  # compile

    def run() -> float:
        t0 = time.perf_counter()
        for start in range(0, steps, 8):
            trainer.train_chunk(data, perm, start % (steps_per_epoch - 8), 8)
        return steps * BATCH / (time.perf_counter() - t0)

    return run


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


def torch_round(steps: int) -> Callable[[], float]:
    """The same, for the PyTorch model: returns examples/s of ``steps`` steps."""
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

    def run() -> float:
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        return steps * BATCH / (time.perf_counter() - t0)

    return run


def alternate(runners: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Examples/s of every runner, round by round, the runners taking turns."""
    rates = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            time.sleep(SETTLE_S)
            rates[name].append(run())
    return rates


def xla_defaults_rates(steps: int, rounds: int, env: dict) -> list[float] | None:
    """The trainer's examples/s without the trainer's XLA flag, measured in a child process."""
    cmd = [sys.executable, "-m", "benchmarks.trainer_throughput", "--jax-only", "--no-cpu-tuning"]
    cmd += ["--steps", str(steps), "--rounds", str(rounds)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
        return None
    return json.loads(run.stdout.splitlines()[-1])


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
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--time-to-99",
        metavar="MNIST_DIR",
        default=None,
        help="also train both to 99%% test accuracy on the IDX files in MNIST_DIR "
        "(3 epochs, cosine schedule), e.g. ../shared/datasets/mnist",
    )
    ap.add_argument("--no-cpu-tuning", action="store_true", help="XLA's CPU defaults for JAX")
    ap.add_argument("--jax-only", action="store_true", help=argparse.SUPPRESS)  # the child run
    args = ap.parse_args()
    environ_before = dict(os.environ)
    flag = xla_cpu.configure(not args.no_cpu_tuning)  # before JAX creates its CPU backend
    if args.jax_only:
        print(json.dumps(alternate({"jax": jax_round(args.steps)}, args.rounds)["jax"]))
        return
    runners = {"jax": jax_round(args.steps)}
    try:
        runners["torch"] = torch_round(args.steps)
    except ImportError:
        pass
    rates = alternate(runners, args.rounds)
    untuned = xla_defaults_rates(args.steps, args.rounds, environ_before) if flag else None
    m = common.machine()
    result = {
        "machine": m,
        "batch": BATCH,
        "xla_flag": flag,
        "jax_examples_per_s": rates["jax"],
        "torch_examples_per_s": rates.get("torch"),
        "jax_xla_defaults_examples_per_s": untuned,
    }
    j = statistics.median(rates["jax"])
    md = [
        f"Measured {m['date']} on {m['cpus']} CPU cores, JAX {m['jax']}, torch {m.get('torch', 'n/a')}. "
        f"MNIST CNN, batch {BATCH}, float32; median of {args.rounds} alternating rounds of "
        f"{args.steps} steps.",
        "",
        "| implementation | examples/s | seconds per 60k epoch |",
        "|---|---|---|",
        f"| examples/mnist (JAX, optax_rmsprop){f', `{flag}`' if flag else ''} | {j:,.0f} | "
        f"{60000 / j:.1f} |",
    ]
    if untuned:
        u = statistics.median(untuned)
        md.append(
            f"| examples/mnist with XLA's CPU defaults (`--no-cpu-tuning`, separate process) | "
            f"{u:,.0f} | {60000 / u:.1f} |"
        )
    if "torch" in rates:
        t = statistics.median(rates["torch"])
        per_round = statistics.median(
            a / b for a, b in zip(rates["jax"], rates["torch"], strict=True)
        )
        md.append(f"| PyTorch (same model and optimizer settings) | {t:,.0f} | {60000 / t:.1f} |")
        md += ["", f"JAX / PyTorch throughput (median of per-round ratios): **{per_round:.2f}**"]
        result["jax_over_torch"] = per_round
    if args.time_to_99:
        runs = {"JAX": jax_time_to_accuracy(args.time_to_99, 0.99, 3)}
        if "torch" in rates:
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
