"""Config checks its values itself, with the messages the command line gives."""

from __future__ import annotations

import dataclasses
import re

import pytest

from examples.mnist import main
from examples.mnist.config import Config

BAD = [  # field, value in Python, the same value on the command line
    ("epochs", 0, "0"),
    ("epochs", -3, "-3"),
    ("batch_size", 0, "0"),
    ("max_steps", 0, "0"),
    ("eval_batch_size", 0, "0"),
    ("steps_per_dispatch", 0, "0"),
    ("seed", -1, "-1"),
    ("checkpoint_every", -5, "-5"),
    ("learning_rate", -1e-3, "-0.001"),
    ("learning_rate", float("inf"), "inf"),
    ("decay", 1.0, "1.0"),
    ("decay", -0.5, "-0.5"),
    ("eps", -1.0, "-1.0"),
    ("momentum", 1.0, "1.0"),
    ("mlp_widths", (10, 0), "10,0"),
]


@pytest.mark.parametrize("name,value,text", BAD)
def test_python_and_cli_refuse_alike(name, value, text, capsys):
    with pytest.raises(ValueError, match=rf"^Config\.{name} must be") as err:
        Config(**{name: value})
    problem = str(err.value).removeprefix(f"Config.{name} ")
    with pytest.raises(SystemExit) as exit_:
        main.parse_config([f"--{name.replace('_', '-')}={text}"])
    assert exit_.value.code == 2
    assert f"argument --{name.replace('_', '-')}: {problem}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(epochs=2.5), "Config.epochs must be an integer, got 2.5"),
        (dict(epochs=True), "Config.epochs must be an integer, got True"),
        (dict(learning_rate="1e-3"), "Config.learning_rate must be a number, got '1e-3'"),
        (dict(learning_rate=float("nan")), "Config.learning_rate must be in [0.0, inf], got nan"),
        (dict(model="resnet"), "Config.model must be one of cnn, mlp, got 'resnet'"),
        (dict(state_dtype="int4"), "Config.state_dtype must be one of float32, bfloat16, int8"),
        (dict(centered=1), "Config.centered must be a bool, got 1"),
        (dict(mlp_widths=[10, 10]), "Config.mlp_widths must be a non-empty tuple of integers"),
        (dict(mlp_widths=()), "Config.mlp_widths must be a non-empty tuple of integers"),
        (dict(workdir=None), "Config.workdir must be a str, got None"),
    ],
)
def test_bad_values_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Config(**kwargs)


def test_replace_is_checked_too():
    with pytest.raises(ValueError, match=r"Config\.epochs must be in \[1, inf\], got 0"):
        dataclasses.replace(Config(), epochs=0)


def test_good_values_are_kept():
    config = Config(epochs=1, learning_rate=1, momentum=0.9, max_steps=None, dataset="kmnist")
    assert (config.epochs, config.learning_rate, config.momentum) == (1, 1, 0.9)


def test_resume_compares_what_defines_the_optimisation():
    assert Config.resumable_fields() == (
        "model", "mlp_widths", "learning_rate", "schedule", "decay", "eps", "momentum",
        "centered", "state_dtype", "epochs", "batch_size", "seed",
    )  # fmt: skip
