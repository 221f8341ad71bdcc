"""The trainer's configuration: one frozen dataclass, the single source of the CLI.

Each field of :class:`Config` carries its help text, its allowed values and
whether ``--resume`` must match it. ``main.py`` generates the command line
from these fields, and ``Config.__post_init__`` checks every value with the
same rules, so ``Config(epochs=0)`` built in Python or in the notebook is
refused with the message ``--epochs 0`` gets.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any


@dataclasses.dataclass(frozen=True)
class Interval:
    """The allowed range of a number: [low, high], either end open or unbounded."""

    low: float | None = None
    high: float | None = None
    high_open: bool = False
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        low = "-inf" if self.low is None else self.low
        high = "inf" if self.high is None else self.high
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def problem(self, value: float) -> str | None:
        """The error message for ``value``, or None when it is in range."""
        return None if value in self else f"must be in {self}, got {value!r}"


POSITIVE = Interval(1)
NON_NEGATIVE_INT = Interval(0)
NON_NEGATIVE = Interval(0.0)
POSITIVE_REAL = Interval(0.0, low_open=True)
UNIT = Interval(0.0, 1.0, high_open=True)


def option(
    default: Any,
    help: str,
    *,
    group: str,
    choices: tuple[str, ...] | None = None,
    interval: Interval | None = None,
    resumable: bool = False,
    metavar: str | None = None,
) -> Any:
    """A Config field with what its command-line flag and its check need."""
    metadata = dict(
        help=help,
        group=group,
        choices=choices,
        interval=interval,
        resumable=resumable,
        metavar=metavar,
    )
    return dataclasses.field(default=default, metadata=metadata)


# The sections of ``--help``. The model's and the optimizer's settings define the
# optimisation, so ``--resume`` must repeat them.
_model = functools.partial(option, group="model", resumable=True)
_optimizer = functools.partial(option, group="optimizer", resumable=True)
_training = functools.partial(option, group="training")
_data = functools.partial(option, group="data")
_output = functools.partial(option, group="output and checkpoints")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a training run.

    The RMSProp defaults (lr 1e-3 with cosine decay to 0, decay 0.9, eps 1e-8
    outside the root, no momentum) reach 99% test accuracy on real MNIST in 3
    epochs with the CNN.
    """

    model: str = _model(
        "cnn",
        "cnn: the classic conv32-conv64-dense256-dense10; mlp: a dense 784-10-10-10",
        choices=("cnn", "mlp"),
    )
    mlp_widths: tuple[int, ...] = _model(
        (10, 10), "hidden widths of the mlp", interval=POSITIVE, metavar="W1,W2,..."
    )
    learning_rate: float = _optimizer(1e-3, "peak learning rate", interval=NON_NEGATIVE)
    schedule: str = _optimizer(
        "cosine",
        "cosine: decay the learning rate to 0 over the run",
        choices=("cosine", "constant"),
    )
    decay: float = _optimizer(
        0.9, "RMSProp decay (rho) of the squared-gradient average", interval=UNIT
    )
    eps: float = _optimizer(
        1e-8,
        "epsilon added to sqrt(nu); 0 is refused: a weight whose gradient is exactly 0 "
        "(those of MNIST's always-black border pixels) would get 0/0 = nan at the first step",
        interval=POSITIVE_REAL,
    )
    momentum: float = _optimizer(0.0, "momentum; 0 disables it", interval=UNIT)
    centered: bool = _optimizer(False, "centered RMSProp (Graves 2013)")
    state_dtype: str = _optimizer(
        "float32",
        "optimizer state precision: int8 and int4 are block-quantized to 8 and 4 bits "
        "(a quarter and an eighth of float32's memory), bfloat16 half",
        choices=("float32", "bfloat16", "int8", "int4"),
    )
    epochs: int = _training(3, "epochs", interval=POSITIVE, resumable=True)
    batch_size: int = _training(
        128, "global batch size, a multiple of the device count", interval=POSITIVE, resumable=True
    )
    max_steps: int | None = _training(
        None, "stop after this many steps (the schedule still spans --epochs)", interval=POSITIVE
    )
    steps_per_dispatch: int = _training(
        8, "train steps per jitted call (jax.lax.scan)", interval=POSITIVE
    )
    eval_batch_size: int = _training(
        1000,
        "test examples per evaluation step, rounded up to a multiple of the device count",
        interval=POSITIVE,
    )
    seed: int = _training(
        0,
        "seed of the initialisation and the data order",
        interval=NON_NEGATIVE_INT,
        resumable=True,
    )
    progress: bool = _training(True, "show a progress bar")
    dataset: str | None = _data(
        None,
        "tfds dataset of 28x28x1 images in 10 classes (mnist, fashion_mnist, kmnist). "
        "Unset: mnist, or the bundled sample when tfds cannot give it; named, it never "
        "falls back",
    )
    data_dir: str | None = _data(
        None, "read the 4 MNIST-format IDX files (optionally .gz) from DIR instead", metavar="DIR"
    )
    workdir: str = _output(
        "runs/mnist", "metrics.jsonl, TensorBoard events, plots, summary.json, checkpoints"
    )
    checkpoint_every: int = _output(
        500,
        "checkpoint period in steps, written at the next dispatch boundary (0: only at the end)",
        interval=NON_NEGATIVE_INT,
        metavar="STEPS",
    )
    resume: bool = _output(False, "continue from the latest checkpoint in --workdir")

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            problem = check(field, getattr(self, field.name))
            if problem:
                raise ValueError(f"Config.{field.name} {problem}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def resumable_fields(cls) -> tuple[str, ...]:
        """The fields that must match for ``--resume`` to continue the same run."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["resumable"])


@functools.cache
def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def value_type(field: dataclasses.Field) -> tuple[type, bool]:
    """The field's value type (``tuple`` for a tuple of ints) and whether None is allowed."""
    hint = _type_hints()[field.name]
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) is types.UnionType and type(None) in args
    if optional:
        (hint,) = (a for a in args if a is not type(None))
    return typing.get_origin(hint) or hint, optional


def check(field: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with ``value`` for ``field``, or None when it is allowed."""
    kind, optional = value_type(field)
    if value is None:
        return None if optional else f"must be a {kind.__name__}, got None"
    interval, choices = field.metadata["interval"], field.metadata["choices"]
    if kind is tuple:
        items = value if isinstance(value, tuple) else ()
        if not items or not all(_is_int(v) and v in interval for v in items):
            return f"must be a non-empty tuple of integers in {interval}, got {value!r}"
        return None
    if kind is int and not _is_int(value):
        return f"must be an integer, got {value!r}"
    if kind is float and not (_is_int(value) or isinstance(value, float)):
        return f"must be a number, got {value!r}"
    if kind in (bool, str) and not isinstance(value, kind):
        return f"must be a {kind.__name__}, got {value!r}"
    if interval is not None and value not in interval:
        return interval.problem(value)
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(choices)}, got {value!r}"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
