"""The MNIST trainer's throughput: ``python -m examples.mnist`` against the same model in PyTorch.

    python -m benchmarks.trainer_throughput [--steps 200] [--rounds 5] [--mnist-dir DIR]
                                            [--time-to-99] [--no-torch] [--small] [--out DIR]

The trainer runs through its command line, in a process of its own; its throughput is
the ``examples_per_sec`` of the ``summary.json`` it writes (training steps only), with
its XLA:CPU tuning and, on CPU, without (``--no-cpu-tuning``). PyTorch runs the same
model and RMSProp settings (float32, all CPU threads) in a plain ``zero_grad /
backward / step`` loop, also in a process of its own. Rounds rotate the order; the
ratio is the median of per-round ratios. ``--time-to-99`` (with ``--mnist-dir``, the
four MNIST IDX files) also trains both 3 epochs with a cosine schedule and reports
when each first reaches 99% test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks import common
from examples.mnist import idx

BATCH = 128


def run_trainer(flags: list[str], timeout_s: float = 1800) -> dict:
    """``python -m examples.mnist *flags`` in a fresh workdir: its summary and metrics.

    A failure or time-out comes back as ``{"error": ...}``.
    """
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "examples.mnist", *flags, "--workdir", workdir]
        cmd += ["--no-progress", "--checkpoint-every", "0"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"did not finish in {timeout_s:.0f} s"}
        summary = os.path.join(workdir, "summary.json")
        if proc.returncode or not os.path.exists(summary):
            return {"error": f"exit {proc.returncode}", "tail": proc.stderr.splitlines()[-15:]}
        with open(summary) as f:
            result = json.load(f)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            result["metrics"] = [json.loads(line) for line in f if line.strip()]
    return result


def jax_rate(steps: int, mnist_dir: str | None, tuned: bool) -> float:
    """Examples/s of the trainer over ``steps`` steps (``tuned``: its XLA:CPU flag)."""
    flags = ["--epochs", "100", "--max-steps", str(steps), "--schedule", "constant"]
    flags += ["--data-dir", mnist_dir] if mnist_dir else []
    return trained(flags + ([] if tuned else ["--no-cpu-tuning"]))["examples_per_sec"]


def trained(flags: list[str]) -> dict:
    """:func:`run_trainer`'s summary; a failed run raises."""
    summary = run_trainer(flags)
    if "error" in summary:
        raise RuntimeError(f"trainer failed: {summary}")
    return summary


def torch_data(mnist_dir: str | None, split: str = "train"):
    """``split``'s images (N, 1, 28, 28) in [0, 1] and labels, as tensors (no dir: random)."""
    import torch

    if mnist_dir:
        images, labels = idx.load_split(mnist_dir, split)
    else:  # throughput does not depend on the pixels
        images = np.random.default_rng(0).integers(0, 256, (10_000, 28, 28, 1), np.uint8)
        labels = np.arange(10_000) % 10
    images = torch.from_numpy(images.transpose(0, 3, 1, 2) / np.float32(255))
    return images, torch.from_numpy(labels.astype(np.int64))


def torch_model_and_data(mnist_dir: str | None):
    """The PyTorch model, its optimizer, and the training images and labels."""
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = nn.Sequential(
        *(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2)),
        *(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2)),
        *(nn.Flatten(), nn.Linear(7 * 7 * 64, 256), nn.ReLU(), nn.Linear(256, 10)),
    )
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-8)
    return model, opt, *torch_data(mnist_dir)


def torch_train(model, opt, images, labels, steps: int, schedule=None) -> float:
    """``steps`` steps over a shuffled order; returns the seconds they took."""
    import torch

    loss_fn, order = torch.nn.CrossEntropyLoss(), torch.randperm(len(labels))
    t0 = time.perf_counter()
    for i in range(steps):
        take = order[(i * BATCH) % (len(labels) - BATCH) :][:BATCH]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(images[take]), labels[take]).backward()
        opt.step()
        if schedule:
            schedule.step()
    return time.perf_counter() - t0


def torch_rate(steps: int, mnist_dir: str | None) -> float:
    """Examples/s of the PyTorch model over ``steps`` steps (after 5 untimed ones)."""
    model, opt, images, labels = torch_model_and_data(mnist_dir)
    torch_train(model, opt, images, labels, 5)
    return steps * BATCH / torch_train(model, opt, images, labels, steps)


def torch_curve(mnist_dir: str, epochs: int = 3) -> list[tuple[int, float, float]]:
    """(step, cumulative training seconds, test accuracy) after each epoch, cosine schedule."""
    import math

    import torch

    model, opt, images, labels = torch_model_and_data(mnist_dir)
    test_images, test_labels = torch_data(mnist_dir, "test")
    per_epoch = len(labels) // BATCH
    total = epochs * per_epoch
    cosine = lambda t: 0.5 * (1 + math.cos(math.pi * t / total))  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    elapsed, curve = 0.0, []
    for epoch in range(1, epochs + 1):
        elapsed += torch_train(model, opt, images, labels, per_epoch, schedule)
        with torch.no_grad():
            accuracy = (model(test_images).argmax(1) == test_labels).float().mean()
        curve.append((epoch * per_epoch, elapsed, float(accuracy)))
    return curve


def jax_curve(mnist_dir: str, epochs: int = 3) -> list[tuple[int, float, float]]:
    """The same for the trainer, from the metrics its run writes."""
    summary = trained(["--data-dir", mnist_dir, "--epochs", str(epochs)])
    elapsed, last, curve = 0.0, 0, []
    for r in summary["metrics"]:
        elapsed += (r["step"] - last) * BATCH / r["examples_per_sec"]
        curve.append((r["step"], elapsed, r["test_accuracy"]))
        last = r["step"]
    return curve


CHILDREN = {"torch": torch_rate, "torch-99": torch_curve}


def torch_child(name: str, *args) -> object:
    """A PyTorch measurement in a process of its own (its threads do not slow the others)."""
    cmd = [sys.executable, "-m", "benchmarks.trainer_throughput", "--child", name, json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode:
        raise RuntimeError(f"{name} child failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def rates(args) -> dict[str, list[float]]:
    """Examples/s per round and implementation, each in a fresh process, the order rotating."""
    runs = {"jax": lambda: jax_rate(args.steps, args.mnist_dir, True)}
    cpu = jax.default_backend() == "cpu"
    if cpu and not args.small:  # what the trainer's XLA:CPU flag is worth
        runs["jax-xla-defaults"] = lambda: jax_rate(args.steps, args.mnist_dir, False)
    if cpu and not args.no_torch and common.has_torch():
        runs["torch"] = lambda: torch_child("torch", args.steps, args.mnist_dir)

    def reported(name: str) -> float:  # a round takes minutes: say where it is
        rate = runs[name]()
        print(f"{name}: {rate:,.0f} examples/s", flush=True)
        return rate

    return common.interleaved({name: lambda n=name: reported(n) for name in runs}, args.rounds)


LABELS = {
    "jax": "examples/mnist (JAX, optax_rmsprop)",
    "jax-xla-defaults": "examples/mnist with XLA's CPU defaults (`--no-cpu-tuning`)",
    "torch": "PyTorch (same model and optimizer settings)",
}


def to_markdown(payload: dict) -> str:
    result = payload["examples_per_sec"]
    md = [
        f"{common.measured(payload['machine'])} MNIST CNN, batch {BATCH}, float32, "
        f"{payload['steps']} steps a run. Each implementation runs alone in a fresh "
        f"process, {len(result['jax'])} rounds in rotating order.",
        "",
        *common.markdown_table(
            ["implementation", "examples/s (median)", "spread over rounds", "s per 60k epoch"],
            [
                [LABELS[k], f"{statistics.median(r):,.0f}", f"{min(r):,.0f} to {max(r):,.0f}"]
                + [f"{60000 / statistics.median(r):.1f}"]
                for k, r in result.items()
            ],
        ),
    ]
    if "jax_over_torch" in payload:
        md += [
            "",
            f"JAX / PyTorch throughput, median of rounds: **{payload['jax_over_torch']:.2f}**",
        ]
    if "time_to_99" in payload:
        md += [
            "",
            "Full MNIST, 3 epochs, cosine schedule; training seconds (no compile, no "
            "evaluation) until 99% test accuracy, and the accuracy after each epoch:",
            "",
        ]
        rows = [
            [
                name,
                next((f"{s:.1f}" for _, s, a in curve if a >= 0.99), "not reached"),
                ", ".join(f"{100 * a:.2f}% ({s:.1f} s)" for _, s, a in curve),
            ]
            for name, curve in payload["time_to_99"].items()
        ]
        md += common.markdown_table(["implementation", "s to 99%", "after each epoch"], rows)
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__, "16 steps, one round, tuned trainer only")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default 200)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
    ap.add_argument("--mnist-dir", default=None, help="the MNIST IDX files (else the bundled)")
    ap.add_argument("--time-to-99", action="store_true", help="also train to 99%% (--mnist-dir)")
    ap.add_argument("--no-torch", action="store_true", help="the JAX trainer only")
    ap.add_argument("--child", nargs=2, metavar=("NAME", "ARGS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](*json.loads(args.child[1]))))
        return
    args.steps = args.steps or (16 if args.small else 200)
    args.rounds = args.rounds or (1 if args.small else 5)
    result = rates(args)
    payload = {"machine": common.machine(), "steps": args.steps, "examples_per_sec": result}
    if "torch" in result:
        payload["jax_over_torch"] = common.ratio(result["jax"], result["torch"])
    if args.time_to_99 and args.mnist_dir:
        payload["time_to_99"] = {"JAX": jax_curve(args.mnist_dir)}
        if "torch" in result:
            payload["time_to_99"]["PyTorch"] = torch_child("torch-99", args.mnist_dir)
    markdown = to_markdown(payload)
    print(markdown)
    common.write("trainer_throughput", payload, markdown, args.out)


if __name__ == "__main__":
    main()
