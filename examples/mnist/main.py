"""Command line of the MNIST trainer: ``python -m examples.mnist --help``.

This file is kept short on purpose: flags in, a Config out, then
``train.train_and_evaluate``. Everything else is a library you can import.
"""

from __future__ import annotations

import argparse
import math
import sys

from examples.mnist.config import Config

DEFAULTS = Config()


def _number(kind, low=None, high=None, *, high_open=False, low_open=False):
    """An argparse type: ``kind`` within [low, high] (or open ends), else a clear error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        bad = not math.isfinite(value)
        bad |= low is not None and (value <= low if low_open else value < low)
        bad |= high is not None and (value >= high if high_open else value > high)
        if bad:
            lo = "(" if low_open else "["
            hi = ")" if high_open else "]"
            rng = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
            raise argparse.ArgumentTypeError(f"must be in {rng}, got {text}")
        return value

    return parse


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"widths must be positive integers, got {text!r}")
    return widths


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        prog="python -m examples.mnist",
        description="Train a Flax NNX model on MNIST with optax_rmsprop.rmsprop, on every "
        "local device (CPU, GPU or TPU). Offline, it trains on the bundled real-MNIST sample.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--model",
        choices=["cnn", "mlp"],
        default=d.model,
        help="cnn: the classic conv32-conv64-dense256-dense10; mlp: a dense 784-10-10-10",
    )
    m.add_argument(
        "--mlp-widths",
        type=_widths,
        default=d.mlp_widths,
        metavar="W1,W2,...",
        help="hidden widths of the mlp",
    )
    o = p.add_argument_group("optimizer (optax_rmsprop.rmsprop)")
    o.add_argument(
        "--learning-rate",
        type=_number(float, 0.0),
        default=d.learning_rate,
        help="peak learning rate, >= 0",
    )
    o.add_argument(
        "--schedule",
        choices=["cosine", "constant"],
        default=d.schedule,
        help="cosine: decay the learning rate to 0 over the run",
    )
    o.add_argument(
        "--decay",
        type=_number(float, 0.0, 1.0, high_open=True),
        default=d.decay,
        help="RMSProp decay (rho) of the squared-gradient average, in [0, 1)",
    )
    o.add_argument(
        "--eps",
        type=_number(float, 0.0),
        default=d.eps,
        help="epsilon added to sqrt(nu), >= 0",
    )
    o.add_argument(
        "--momentum",
        type=_number(float, 0.0, 1.0, high_open=True),
        default=d.momentum,
        help="momentum in [0, 1); 0 disables it",
    )
    o.add_argument("--centered", action="store_true", help="centered RMSProp (Graves 2013)")
    o.add_argument(
        "--state-dtype",
        choices=["float32", "bfloat16", "int8"],
        default=d.state_dtype,
        help="optimizer state precision: int8 is 8-bit block-quantized (a quarter of "
        "float32's memory), bfloat16 half",
    )
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=_number(int, 1), default=d.epochs, help="epochs, >= 1")
    t.add_argument(
        "--batch-size",
        type=_number(int, 1),
        default=d.batch_size,
        help="global batch size, a multiple of the device count",
    )
    t.add_argument(
        "--max-steps",
        type=_number(int, 1),
        default=None,
        help="stop after this many steps (the schedule still spans --epochs)",
    )
    t.add_argument(
        "--steps-per-dispatch",
        type=_number(int, 1),
        default=d.steps_per_dispatch,
        help="train steps per jitted call (jax.lax.scan)",
    )
    t.add_argument(
        "--seed",
        type=_number(int, 0),
        default=d.seed,
        help="seed of the initialisation and the data order",
    )
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    t.add_argument(
        "--no-cpu-tuning",
        dest="cpu_tuning",
        action="store_false",
        help="leave XLA:CPU's defaults alone; by default the trainer adds "
        "--xla_cpu_experimental_ynn_fusion_type=individual_dot to XLA_FLAGS (convolutions on "
        "Eigen, about 2x faster training on CPU; no effect on GPU and TPU)",
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default=None,
        help="tfds dataset of 28x28x1 images in 10 classes (mnist, fashion_mnist, "
        "kmnist); default mnist, or the bundled sample when tfds cannot give it. "
        "Named explicitly, it never falls back.",
    )
    data.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="read the 4 MNIST-format IDX files (optionally .gz) from DIR instead",
    )
    data.add_argument(
        "--tfds-data-dir",
        default=None,
        metavar="DIR",
        help="tensorflow-datasets data_dir (default ~/tensorflow_datasets)",
    )
    c = p.add_argument_group("output and checkpoints")
    c.add_argument(
        "--workdir",
        default=d.workdir,
        help="metrics.jsonl, TensorBoard events, plots, summary.json, checkpoints",
    )
    c.add_argument(
        "--checkpoint-every",
        type=_number(int, 0),
        default=d.checkpoint_every,
        metavar="STEPS",
        help="checkpoint period in steps, written at the next dispatch boundary "
        "(0: only at the end)",
    )
    c.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --workdir",
    )
    h = p.add_argument_group("several hosts (jax.distributed)")
    h.add_argument("--coordinator-address", default=None, metavar="HOST:PORT")
    h.add_argument("--num-processes", type=_number(int, 1), default=None)
    h.add_argument("--process-id", type=_number(int, 0), default=None)
    return p


def parse_config(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    config = Config(
        model=args.model,
        mlp_widths=tuple(args.mlp_widths),
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        schedule=args.schedule,
        decay=args.decay,
        eps=args.eps,
        momentum=args.momentum,
        centered=args.centered,
        state_dtype=args.state_dtype,
        seed=args.seed,
        workdir=args.workdir,
        dataset=args.dataset or DEFAULTS.dataset,
        dataset_explicit=args.dataset is not None,
        data_dir=args.data_dir,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        steps_per_dispatch=args.steps_per_dispatch,
        max_steps=args.max_steps,
        progress=args.progress,
    )
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

    log = print if jax.process_index() == 0 else (lambda _msg: None)
    log(f"JAX {jax.__version__} | devices: {', '.join(str(d) for d in jax.devices())}")
    if cpu_flag:
        log(f"XLA_FLAGS += {cpu_flag} (--no-cpu-tuning to leave XLA's defaults)")
    log("config: " + ", ".join(f"{k}={v}" for k, v in config.to_dict().items()))
    try:
        dataset = input_pipeline.load(
            config.dataset,
            config.data_dir,
            dataset_explicit=config.dataset_explicit,
            tfds_data_dir=args.tfds_data_dir,
            log=log,
        )
        train.train_and_evaluate(config, dataset, log=log)
    except (input_pipeline.DataUnavailable, ValueError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
