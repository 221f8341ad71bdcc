"""The MNIST CNN's training throughput: examples/optax_rmsprop trainer vs the same model in PyTorch.

    python -m benchmarks.trainer_throughput [--steps 64] [--rounds 5] [--time-to-99 MNIST_DIR]

Same model (conv32-conv64-dense256-dense10, ReLU, 2x2 average pooling), batch
128, RMSProp (lr 1e-3, decay 0.9, eps 1e-8), float32, data already in memory,
all CPU threads for both. JAX runs the trainer's own jitted multi-step chunks
(``Trainer.train_chunk``) with the trainer's XLA:CPU flag
(``examples/mnist/xla_cpu.py``); PyTorch a plain ``zero_grad / backward /
step`` loop. Every implementation runs alone in a fresh process (two thread
pools in one process slow each other down), once per round, the order
rotating; the table gives the median and the spread over rounds, and the
ratio is the median of the per-round ratios. The trainer with XLA's defaults
(``--no-cpu-tuning``) shows what the flag is worth. Seconds per epoch are for
60,000 examples. Writes benchmarks/results/trainer_throughput.{json,md}.
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


def jax_round(steps: int) -> Callable[[], float]:
    """A function that trains ``steps`` steps with the trainer and returns examples/s."""
    ds = input_pipeline.load_bundled_sample()
    config = Config(batch_size=BATCH, progress=False, steps_per_dispatch=8)
    mesh = train.make_mesh()
    steps_per_epoch = train.steps_per_epoch(config, ds.num_train, mesh.size)
    trainer = train.Trainer(config, mesh, steps_per_epoch)
    data = input_pipeline.put_on_devices(ds, mesh, config.eval_batch_size)
    trainer.train_chunk(data, 0, 8)  # compile

    def run() -> float:
        t0 = time.perf_counter()
        for start in range(0, steps, 8):
            trainer.train_chunk(data, start % (steps_per_epoch - 8), 8)
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


CHILDREN = {
    "jax": lambda steps: jax_round(steps),
    "jax-xla-defaults": lambda steps: jax_round(steps),
    "torch": lambda steps: torch_round(steps),
}


def _child_command(name: str, *args: str) -> list[str]:
    """The command that runs implementation ``name`` in a child process of this benchmark."""
    return [sys.executable, "-m", "benchmarks.trainer_throughput", "--child", name, *args]


def child_rates(name: str, steps: int, repeats: int) -> list[float]:
    """Runs one implementation alone in a fresh process; its examples/s, ``repeats`` times.

    Each framework gets a process of its own, so neither one's thread pool
    (PyTorch's OpenMP workers keep spinning after a step) slows the other.
    """
    cmd = _child_command(name, "--steps", str(steps), "--rounds", str(repeats))
    if name == "jax-xla-defaults":
        cmd.append("--no-cpu-tuning")
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{name} child failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.splitlines()[-1])


def alternate(names: list[str], steps: int, rounds: int, repeats: int) -> dict[str, list[float]]:
    """Examples/s per round (median of ``repeats`` in one process); the order rotates."""
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in common.rotated(names, r):
            rates[name].append(statistics.median(child_rates(name, steps, repeats)))
            print(f"round {r}: {name} {rates[name][-1]:,.0f} examples/s", flush=True)
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
    to_x = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).astype(np.float32) / 255)
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
    ap.add_argument("--steps", type=int, default=64, help="steps per timed repeat")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (a fresh process each)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats in each process")
    ap.add_argument(
        "--time-to-99",
        metavar="MNIST_DIR",
        default=None,
        help="also train both to 99%% test accuracy on the IDX files in MNIST_DIR "
        "(3 epochs, cosine schedule), e.g. ../shared/datasets/mnist",
    )
    ap.add_argument("--no-cpu-tuning", action="store_true", help="XLA's CPU defaults for JAX")
    ap.add_argument("--no-torch", action="store_true", help="the JAX trainer only")
    ap.add_argument("--child", choices=[*CHILDREN, "jax-99", "torch-99"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    flag = xla_cpu.configure(not args.no_cpu_tuning)  # before JAX creates its CPU backend
    if args.child in CHILDREN:
        run = CHILDREN[args.child](args.steps)
        print(json.dumps([run() for _ in range(args.rounds)]))
        return
    if args.child in ("jax-99", "torch-99"):
        measure = jax_time_to_accuracy if args.child == "jax-99" else torch_time_to_accuracy
        print(json.dumps(measure(args.time_to_99, 0.99, 3)))
        return
    names = ["jax"] + (["jax-xla-defaults"] if flag else [])
    try:
        import torch  # noqa: F401

        names += [] if args.no_torch else ["torch"]
    except ImportError:
        pass
    rates = alternate(names, args.steps, args.rounds, args.repeats)
    m = common.machine()
    result = {"machine": m, "batch": BATCH, "xla_flag": flag, "examples_per_s": rates}
    labels = {
        "jax": f"examples/mnist (JAX, optax_rmsprop){f', `{flag}`' if flag else ''}",
        "jax-xla-defaults": "examples/mnist with XLA's CPU defaults (`--no-cpu-tuning`)",
        "torch": "PyTorch (same model and optimizer settings)",
    }
    md = [
        f"Measured {m['date']} on {m['cpus']} CPU cores, JAX {m['jax']}, torch "
        f"{m.get('torch', 'n/a')}. MNIST CNN, batch {BATCH}, float32. Each implementation "
        f"runs alone in a fresh process, {args.rounds} rounds in rotating order; a round's "
        f"figure is the median of {args.repeats} repeats of {args.steps} steps.",
        "",
        "| implementation | examples/s (median) | spread over rounds | seconds per 60k epoch |",
        "|---|---|---|---|",
    ]
    for name, r in rates.items():
        med = statistics.median(r)
        md.append(
            f"| {labels[name]} | {med:,.0f} | {min(r):,.0f} to {max(r):,.0f} | {60000 / med:.1f} |"
        )
    if "torch" in rates:
        ratios = [a / b for a, b in zip(rates["jax"], rates["torch"], strict=True)]
        result["jax_over_torch"] = statistics.median(ratios)
        md += [
            "",
            f"JAX / PyTorch throughput, per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
            f"median **{statistics.median(ratios):.2f}**",
        ]
    if args.time_to_99:
        runs = {"JAX": _time_to_99_child("jax-99", args.time_to_99)}
        if "torch" in rates:
            runs["PyTorch"] = _time_to_99_child("torch-99", args.time_to_99)
        result["time_to_99"] = runs
        md += [
            "",
            "Time to 99% test accuracy on full MNIST (training seconds, compile and "
            "evaluation excluded; cosine schedule over 3 epochs; each in its own process):",
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


def _time_to_99_child(name: str, data_dir: str) -> dict:
    cmd = _child_command(name, "--time-to-99", data_dir)
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(run.stdout.splitlines()[-1])


if __name__ == "__main__":
    main()
