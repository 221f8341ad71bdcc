"""Command line of the MNIST trainer: ``python -m examples.mnist --help``.

This file is kept short on purpose: flags in, a Config out, then
``train.train_and_evaluate``. Everything else is a library you can import.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from examples.mnist import config as config_lib
from examples.mnist.config import Config


def _widths(text: str) -> tuple[int, ...]:
    return tuple(int(w) for w in text.split(","))


def _checked(
    parse: Callable[[str], Any], expected: str, problem: Callable[[Any], str | None]
) -> Callable[[str], Any]:
    """An argparse ``type``: ``text`` parsed, then refused with ``problem``'s message if any."""

    def parse_and_check(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        message = problem(value)
        if message:
            raise argparse.ArgumentTypeError(message)
        return value

    return parse_and_check


def _field_type(field: dataclasses.Field) -> Callable[[str], Any]:
    """The argparse ``type`` of a Config field: Config's own check, at parse time."""
    kind, _ = config_lib.value_type(field)
    if kind is tuple:
        return _checked(_widths, "comma-separated integers", partial(config_lib.check, field))
    return _checked(kind, f"a valid {kind.__name__}", partial(config_lib.check, field))


def _count(interval: config_lib.Interval) -> Callable[[str], int]:
    return _checked(int, "a valid int", interval.problem)


def _flag(field: dataclasses.Field) -> str:
    return "--" + field.name.replace("_", "-")


def _help(field: dataclasses.Field, kind: type) -> str:
    """The field's help, its range and its default as one would type it."""
    notes = []
    if field.metadata["interval"] is not None:
        notes.append(f"in {field.metadata['interval']}")
    if kind is bool:
        notes.append(f"default: {'on' if field.default else 'off'}")
    elif field.default is not None:
        shown = ",".join(map(str, field.default)) if kind is tuple else field.default
        notes.append(f"default: {shown}")
    return field.metadata["help"] + (f" ({'; '.join(notes)})" if notes else "")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field, ``--field-name``, with the field's help, default and check."""
    groups: dict[str, Any] = {}  # section title -> argparse argument group
    for field in dataclasses.fields(Config):
        meta = field.metadata
        if meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(meta["group"])
        kind, _ = config_lib.value_type(field)
        kwargs: dict[str, Any] = dict(default=field.default, help=_help(field, kind))
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif meta["choices"]:
            kwargs["choices"] = meta["choices"]
        elif kind is not str:
            kwargs["type"] = _field_type(field)
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        groups[meta["group"]].add_argument(_flag(field), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.mnist",
        description="Train a Flax NNX model on MNIST with optax_rmsprop.rmsprop, on every "
        "local device (CPU, GPU or TPU). Offline, it trains on the bundled real-MNIST sample.",
    )
    add_config_flags(parser)
    runtime = parser.add_argument_group("this process (not part of the run's config)")
    runtime.add_argument(
        "--tfds-data-dir",
        default=None,
        metavar="DIR",
        help="tensorflow-datasets data_dir (default ~/tensorflow_datasets)",
    )
    runtime.add_argument(
        "--no-cpu-tuning",
        dest="cpu_tuning",
        action="store_false",
        help="leave XLA:CPU's defaults alone; by default the trainer adds "
        "--xla_cpu_experimental_ynn_fusion_type=individual_dot to XLA_FLAGS (convolutions on "
        "Eigen, about 2x faster training on CPU; no effect on GPU and TPU)",
    )
    hosts = parser.add_argument_group("several hosts (jax.distributed)")
    hosts.add_argument("--coordinator-address", default=None, metavar="HOST:PORT")
    hosts.add_argument("--num-processes", type=_count(config_lib.POSITIVE), default=None)
    hosts.add_argument("--process-id", type=_count(config_lib.NON_NEGATIVE_INT), default=None)
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """The run's Config and the parsed flags (the process-level ones are read from these)."""
    args = build_parser().parse_args(argv)
    config = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    return config, args


def main(argv: list[str] | None = None) -> int:
    config, args = parse_config(argv)
    from examples.mnist import xla_cpu

    cpu_flag = xla_cpu.configure(args.cpu_tuning)  # before JAX creates a backend
    import jax

    if args.coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)

    from examples.mnist import input_pipeline, train
    from examples.mnist.checkpoints import CheckpointError
    from examples.mnist.workdir_lock import WorkdirBusy

    log = print if jax.process_index() == 0 else (lambda _msg: None)
    log(f"JAX {jax.__version__} | devices: {', '.join(str(d) for d in jax.devices())}")
    if cpu_flag:
        log(f"XLA_FLAGS += {cpu_flag} (--no-cpu-tuning to leave XLA's defaults)")
    log("config: " + ", ".join(f"{k}={v}" for k, v in config.to_dict().items()))
    try:
        dataset = input_pipeline.load(
            config.dataset,
            config.data_dir,
            tfds_data_dir=args.tfds_data_dir,
            log=log,
        )
        train.train_and_evaluate(config, dataset, log=log)
    except train.Preempted as err:
        if jax.process_index() == 0:
            print(f"{err.where} Resume with: {resume_command(argv)}", file=sys.stderr, flush=True)
        return err.exit_code
    except train.RunStopped as err:
        print(err, file=sys.stderr, flush=True)
        return err.exit_code
    except (input_pipeline.DataUnavailable, ValueError, CheckpointError, WorkdirBusy) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def resume_command(argv: list[str] | None) -> str:
    """The command that continues this run: the same flags, with ``--resume``."""
    flags = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in flags:
        flags.append("--resume")
    return shlex.join(["python", "-m", "examples.mnist", *flags])
