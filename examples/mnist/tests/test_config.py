"""Config checks its values itself, with the messages the command line gives."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from examples.mnist import main
from examples.mnist.config import RUN_DEFINING, Config
from examples.mnist.robust import checkpoints
from examples.mnist.robust.checkpoints import CheckpointError

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
    ("eps", 0.0, "0.0"),
    ("momentum", 1.0, "1.0"),
    ("mlp_widths", (10, 0), "10,0"),
    ("model", "resnet", "resnet"),
    ("state_dtype", "int2", "int2"),
    ("param_dtype", "float16", "float16"),
    ("param_rounding", "up", "up"),
    ("schedule", "linear", "linear"),
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
        (
            dict(state_dtype="int2"),
            "Config.state_dtype must be one of float32, bfloat16, int8, int4, got 'int2'",
        ),
        (dict(centered=1), "Config.centered must be a bool, got 1"),
        (dict(mlp_widths=[10, 10]), "Config.mlp_widths must be a non-empty tuple of integers"),
        (dict(mlp_widths=()), "Config.mlp_widths must be a non-empty tuple of integers"),
        (dict(workdir=None), "Config.workdir must be a str, got None"),
    ],
)
def test_bad_values_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Config(**kwargs)


def test_resume_and_overwrite_exclude_each_other():
    with pytest.raises(ValueError, match=r"^Config\.overwrite must be False with resume=True"):
        Config(resume=True, overwrite=True)
    with pytest.raises(SystemExit):
        main.parse_config(["--resume", "--overwrite"])


def test_replace_is_checked_too():
    with pytest.raises(ValueError, match=r"Config\.epochs must be in \[1, inf\], got 0"):
        dataclasses.replace(Config(), epochs=0)


# A setting that changes the optimisation, and one that changes only how it runs.
OPTIMISATION_CHANGES = [
    ("learning_rate", 1e-2),
    ("model", "mlp"),
    ("seed", 1),
    ("epochs", 5),
    ("batch_size", 64),
    ("state_dtype", "int8"),
    ("param_dtype", "bfloat16"),
    ("param_rounding", "stochastic"),
    ("eps", 1e-6),
]
RUN_CHANGES = [
    ("max_steps", 10),
    ("steps_per_dispatch", 2),
    ("checkpoint_every", 7),
    ("progress", False),
    ("eval_batch_size", 500),
    ("data_dir", "elsewhere"),
]


SAVED = json.loads(json.dumps(Config().to_dict()))  # as config.json holds it


@pytest.mark.parametrize("name,value", OPTIMISATION_CHANGES)
def test_a_rerun_refuses_a_change_to_the_optimisation(tmp_path, name, value):
    changed = dataclasses.replace(Config(), **{name: value}).to_dict()
    with pytest.raises(CheckpointError, match=rf"holds a run with other settings \({name}: ") as e:
        checkpoints.refuse_other_settings(str(tmp_path), SAVED, changed, RUN_DEFINING)
    assert "pass another --workdir" in str(e.value) and "pass --overwrite" in str(e.value)


@pytest.mark.parametrize("name,value", RUN_CHANGES)
def test_a_rerun_accepts_a_change_to_how_the_run_runs(tmp_path, name, value):
    changed = dataclasses.replace(Config(), **{name: value}).to_dict()
    checkpoints.refuse_other_settings(str(tmp_path), SAVED, changed, RUN_DEFINING)


def test_help_says_why_eps_zero_is_refused_and_what_tfds_waits_for():
    # The refusal itself is in BAD; the help gives the reason before anyone tries it.
    help_text = " ".join(main.build_parser().format_help().split())
    assert "--eps EPS epsilon added to sqrt(nu), > 0; 0 is refused" in help_text
    assert "would get 0/0 = nan (default: 1e-08)" in help_text
    assert "an online check (storage.googleapis.com:443) waits at most 2 s" in help_text
