"""Command line of the MNIST trainer: ``python -m examples.mnist --help``.

Kept short on purpose: flags in, a Config out, then ``train.train_and_evaluate``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from typing import Any

import jax  # XLA reads XLA_FLAGS when JAX creates its first backend, after xla_cpu.configure

from examples.mnist import input_pipeline, train
from examples.mnist.config import ROUNDINGS, Config, number, problem
from examples.mnist.robust import divergence, preemption, xla_cpu
from examples.mnist.robust.checkpoints import CheckpointError
from examples.mnist.robust.workdir_lock import WorkdirBusy


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(w) for w in text.split(","))


_EXPECTED = {int: "a valid int", float: "a valid float", _ints: "comma-separated integers"}


def _checked(parse: Callable[[str], Any], check: Callable[[Any], str | None]) -> Callable:
    """An argparse ``type``: the text parsed, then refused with ``check``'s message if any."""

    def parse_and_check(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {_EXPECTED[parse]}") from None
        if message := check(value):
            raise argparse.ArgumentTypeError(message)
        return value

    return parse_and_check


def _add(group: Any, name: str, help: str, parse: Callable = str, **kwargs: Any) -> None:
    """Adds the flag of Config field ``name``, ``--name-with-dashes``, checked by Config."""
    if parse is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = _checked(parse, lambda value: problem(name, value))
    group.add_argument("--" + name.replace("_", "-"), help=help, **kwargs)


def _optimisation_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and optimizer (a rerun must repeat these)")
    _add(group, "model", "cnn: conv32-conv64-dense256-dense10; mlp: dense", metavar="{cnn,mlp}")
    _add(group, "mlp_widths", "the mlp's hidden widths", _ints, metavar="W1,W2,...")
    _add(group, "learning_rate", "peak learning rate, >= 0", float)
    _add(group, "schedule", "cosine: to 0 over the run", metavar="{cosine,constant}")
    _add(group, "decay", "RMSProp decay (rho) of the squared-gradient average, in [0, 1)", float)
    eps = "0 is refused: a weight whose gradient is exactly 0 (those of MNIST's always-black "
    eps += "border pixels) would get 0/0 = nan"
    _add(group, "eps", f"epsilon added to sqrt(nu), > 0; {eps}", float)
    _add(group, "momentum", "momentum in [0, 1); 0 disables it", float)
    _add(group, "centered", "centered RMSProp (Graves 2013)", bool)
    dtypes = "{float32,bfloat16,int8,int4}"
    state = "optimizer state: bfloat16 half of float32's memory, int8 and int4 (block-quantized) "
    state += "about a quarter and an eighth on large layers"
    _add(group, "state_dtype", state, metavar=dtypes)
    params = "parameters, stored and computed in: bfloat16 halves float32's memory"
    _add(group, "param_dtype", params, metavar="{float32,bfloat16}")
    rounding = "how bfloat16 parameters take each update: compensated (a float32 master weight, "
    rounding += "+2 bytes/param), stochastic (no memory), nearest (updates under half a unit "
    rounding += "in the last place are lost); see docs/bfloat16.md"
    _add(group, "param_rounding", rounding, metavar="{" + ",".join(ROUNDINGS) + "}")
    group = parser.add_argument_group("training (a rerun must repeat epochs, batch size, seed)")
    _add(group, "epochs", "epochs, >= 1", int)
    _add(group, "batch_size", "global batch, a multiple of the device count", int)
    _add(group, "max_steps", "stop after this many steps (the schedule spans --epochs)", int)
    _add(group, "steps_per_dispatch", "train steps per jitted call, >= 1", int)
    _add(group, "eval_batch_size", "test examples per evaluation step (x devices)", int)
    _add(group, "seed", "seed of the initialisation and of the data order, >= 0", int)
    _add(group, "progress", "show a progress bar", bool)


def _run_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    host, port = input_pipeline.TFDS_HOST
    wait = input_pipeline.TFDS_TIMEOUT_S
    tfds = f"Unless prepared locally, it needs the tfds server: an online check ({host}:{port}) "
    tfds += f"waits at most {wait:g} s for it. Unset: mnist, or the bundled sample when tfds "
    tfds += "cannot give it; named, it never falls back"
    _add(group, "dataset", f"tfds dataset of 28x28x1 images, 10 classes (mnist, kmnist). {tfds}")
    _add(group, "data_dir", "read the 4 MNIST IDX files (or .gz) from DIR instead", metavar="DIR")
    group.add_argument("--tfds-data-dir", metavar="DIR", help="tfds data_dir (unset: tfds's)")
    group = parser.add_argument_group("output and checkpoints")
    _add(group, "workdir", "metrics.jsonl, TensorBoard events, plots, summary.json, checkpoints")
    every = "checkpoint period, at the next dispatch boundary (0: only at the end)"
    _add(group, "checkpoint_every", every, int, metavar="STEPS")
    _add(group, "resume", "continue the run in --workdir (a rerun does when settings match)", bool)
    _add(group, "overwrite", "delete the run in --workdir and start afresh", bool)
    group = parser.add_argument_group("this process")
    tuning = f"leave XLA:CPU's defaults (a CPU run adds {xla_cpu.CPU_TUNING} to XLA_FLAGS "
    tuning += "from jaxlib 0.10: the CNN trains faster, as benchmarks/results/"
    tuning += "trainer_throughput.md measures). Tuning: %(default)s"
    group.add_argument("--no-cpu-tuning", dest="cpu_tuning", action="store_false", help=tuning)
    group.add_argument("--coordinator-address", metavar="HOST:PORT", help="for jax.distributed")
    count = lambda low: _checked(int, lambda n: number(n, low, integer=True))
    group.add_argument("--num-processes", type=count(1), help="for jax.distributed")
    group.add_argument("--process-id", type=count(0), help="for jax.distributed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.mnist",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a Flax NNX model on MNIST with optax_rmsprop.rmsprop on every local "
        "device (CPU, GPU or TPU). Run again with the same settings, it continues (or reports) "
        "the run in --workdir; with other settings it refuses.",
    )
    _optimisation_flags(parser)
    _run_flags(parser)
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
    cpu_flag = xla_cpu.configure(args.cpu_tuning)  # before JAX creates a backend
    if cpu_flag and not args.process_id:
        print(f"XLA_FLAGS += {cpu_flag} (--no-cpu-tuning to leave XLA's defaults)", flush=True)
    if args.coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    log = print if jax.process_index() == 0 else (lambda *_, **__: None)
    log(f"JAX {jax.__version__} | devices: {', '.join(str(d) for d in jax.devices())}")
    log("config: " + ", ".join(f"{k}={v}" for k, v in config.to_dict().items()))
    try:
        where = dict(tfds_data_dir=args.tfds_data_dir, log=log)
        data = input_pipeline.load(config.dataset, config.data_dir, **where)
        train.train_and_evaluate(config, data, log=log)
    except preemption.Preempted as err:
        command = ["python", "-m", "examples.mnist", *(sys.argv[1:] if argv is None else argv)]
        log(f"{err.where} Resume with the same command: {shlex.join(command)}", file=sys.stderr)
        return err.exit_code
    except divergence.Diverged as err:
        print(err, file=sys.stderr, flush=True)
        return 1
    except (input_pipeline.DataUnavailable, ValueError, CheckpointError, WorkdirBusy) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
