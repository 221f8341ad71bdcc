"""Command line of the MNIST trainer: ``python -m examples.mnist --help``.

This file is kept short on purpose: flags in, a Config out, then
``train.train_and_evaluate``. Everything else is a library you can import.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from typing import Any

from examples.mnist import config as config_lib
from examples.mnist.config import Config


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(w) for w in text.split(","))


_EXPECTED = {int: "a valid int", float: "a valid float", _ints: "comma-separated integers"}


def _parsed(text: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {_EXPECTED[parse]}") from None


def _field(name: str, parse: Callable[[str], Any] = str) -> Callable[[str], Any]:
    """An argparse ``type`` that refuses what ``Config`` refuses, with Config's message."""

    def parse_and_check(text: str) -> Any:
        value = parse(text) if parse is str else _parsed(text, parse)
        try:
            Config(**{name: value})
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"Config.{name} ")) from None
        return value

    return parse_and_check


def _count(low: int) -> Callable[[str], int]:
    def parse_and_check(text: str) -> int:
        problem = config_lib.number(value := _parsed(text, int), low, integer=True)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse_and_check


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.mnist",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a Flax NNX model on MNIST with optax_rmsprop.rmsprop, on every "
        "local device (CPU, GPU or TPU). Run again with the same settings, it continues "
        "(or reports) the run in --workdir; with other settings it refuses.",
    )
    bool_flag = argparse.BooleanOptionalAction
    group = parser.add_argument_group("model (a rerun must repeat these)")
    group.add_argument(
        "--model",
        type=_field("model"),
        metavar="{cnn,mlp}",
        help="cnn: the classic conv32-conv64-dense256-dense10; mlp: a dense 784-10-10-10",
    )
    group.add_argument(
        "--mlp-widths", type=_field("mlp_widths", _ints), metavar="W1,W2,...", help="mlp widths"
    )
    group = parser.add_argument_group("optimizer (a rerun must repeat these)")
    group.add_argument(
        "--learning-rate", type=_field("learning_rate", float), help="peak learning rate, >= 0"
    )
    group.add_argument(
        "--schedule",
        type=_field("schedule"),
        metavar="{cosine,constant}",
        help="cosine: decay the learning rate to 0 over the run",
    )
    group.add_argument(
        "--decay", type=_field("decay", float), help="RMSProp decay (rho), in [0, 1)"
    )
    group.add_argument(
        "--eps",
        type=_field("eps", float),
        help="epsilon added to sqrt(nu), > 0; 0 is refused: a weight whose gradient is "
        "exactly 0 (those of MNIST's always-black border pixels) would get 0/0 = nan",
    )
    group.add_argument(
        "--momentum", type=_field("momentum", float), help="momentum in [0, 1); 0 disables it"
    )
    group.add_argument("--centered", action=bool_flag, help="centered RMSProp (Graves 2013)")
    group.add_argument(
        "--state-dtype",
        type=_field("state_dtype"),
        metavar="{float32,bfloat16,int8,int4}",
        help="optimizer state precision: bfloat16 half of float32's memory, int8 and int4 "
        "block-quantized to a quarter and an eighth",
    )
    group = parser.add_argument_group(
        "training (a rerun must repeat --epochs, --batch-size, --seed)"
    )
    group.add_argument("--epochs", type=_field("epochs", int), help="epochs, >= 1")
    group.add_argument(
        "--batch-size",
        type=_field("batch_size", int),
        help="global batch, a multiple of the devices",
    )
    group.add_argument(
        "--max-steps",
        type=_field("max_steps", int),
        help="stop after this many steps (the schedule still spans --epochs)",
    )
    group.add_argument(
        "--steps-per-dispatch",
        type=_field("steps_per_dispatch", int),
        help="train steps per jitted call, >= 1",
    )
    group.add_argument(
        "--eval-batch-size",
        type=_field("eval_batch_size", int),
        help="test examples per evaluation step, rounded up to a multiple of the devices",
    )
    group.add_argument("--seed", type=_field("seed", int), help="seed of the init and data order")
    group.add_argument("--progress", action=bool_flag, help="show a progress bar")
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        help="tfds dataset of 28x28x1 images in 10 classes (mnist, fashion_mnist, kmnist). "
        "Unless it is prepared locally, tfds needs its server: an online check "
        "(storage.googleapis.com:443) waits at most 2 s for it. Unset: mnist, or the bundled "
        "sample when tfds cannot give it; named, it never falls back",
    )
    group.add_argument(
        "--data-dir", metavar="DIR", help="read the 4 MNIST IDX files (or .gz) from DIR instead"
    )
    group.add_argument("--tfds-data-dir", metavar="DIR", help="tfds data_dir (unset: tfds's)")
    group = parser.add_argument_group("output and checkpoints")
    group.add_argument(
        "--workdir", help="metrics.jsonl, TensorBoard events, plots, summary.json, checkpoints"
    )
    group.add_argument(
        "--checkpoint-every",
        type=_field("checkpoint_every", int),
        metavar="STEPS",
        help="checkpoint period, at the next dispatch boundary (0: only at the end)",
    )
    group.add_argument(
        "--resume",
        action=bool_flag,
        help="continue the run in --workdir (a rerun with the same settings does anyway)",
    )
    group.add_argument(
        "--overwrite",
        action=bool_flag,
        help="delete the run in --workdir (checkpoints, metrics, plots) and start afresh",
    )
    group = parser.add_argument_group("this process")
    group.add_argument(
        "--no-cpu-tuning",
        dest="cpu_tuning",
        action="store_false",
        help="leave XLA:CPU's defaults; by default a CPU run adds --xla_cpu_experimental_"
        "ynn_fusion_type=individual_dot to XLA_FLAGS (1.4x faster CNN training on jaxlib 0.10)",
    )
    group.add_argument("--coordinator-address", metavar="HOST:PORT", help="jax.distributed")
    group.add_argument("--num-processes", type=_count(1), help="jax.distributed")
    group.add_argument("--process-id", type=_count(0), help="jax.distributed")
    parser.set_defaults(**Config().to_dict())
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """The run's Config and the parsed flags (the process-level ones are read from these)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # each flag is checked alone as it is parsed; this checks them together
        return Config(**{name: getattr(args, name) for name in Config().to_dict()}), args
    except ValueError as err:
        parser.error(str(err))


def main(argv: list[str] | None = None) -> int:
    config, args = parse_config(argv)
    from examples.mnist import xla_cpu

    cpu_flag = xla_cpu.configure(args.cpu_tuning)  # before JAX creates a backend
    if cpu_flag and not args.process_id:
        print(f"XLA_FLAGS += {cpu_flag} (--no-cpu-tuning to leave XLA's defaults)", flush=True)
    import jax

    if args.coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)

    from examples.mnist import input_pipeline, train
    from examples.mnist.checkpoints import CheckpointError
    from examples.mnist.workdir_lock import WorkdirBusy

    log = print if jax.process_index() == 0 else (lambda _msg: None)
    log(f"JAX {jax.__version__} | devices: {', '.join(str(d) for d in jax.devices())}")
    log("config: " + ", ".join(f"{k}={v}" for k, v in config.to_dict().items()))
    try:
        dataset = input_pipeline.load(
            config.dataset, config.data_dir, tfds_data_dir=args.tfds_data_dir, log=log
        )
        train.train_and_evaluate(config, dataset, log=log)
    except train.Preempted as err:
        if jax.process_index() == 0:
            command = shlex.join(
                ["python", "-m", "examples.mnist", *(sys.argv[1:] if argv is None else argv)]
            )
            print(f"{err.where} Resume with the same command: {command}", file=sys.stderr)
        return err.exit_code
    except train.RunStopped as err:
        print(err, file=sys.stderr, flush=True)
        return err.exit_code
    except (input_pipeline.DataUnavailable, ValueError, CheckpointError, WorkdirBusy) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
