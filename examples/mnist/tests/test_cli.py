"""The command line: every flag documented, bad numbers refused before any work."""

from __future__ import annotations

import dataclasses

import pytest

from examples.mnist import main
from examples.mnist.config import Config

# The published command line, written out: a renamed or lost flag breaks users' scripts.
FLAGS = [
    "--model",
    "--mlp-widths",
    "--epochs",
    "--batch-size",
    "--learning-rate",
    "--schedule",
    "--decay",
    "--eps",
    "--momentum",
    "--centered",
    "--state-dtype",
    "--seed",
    "--workdir",
    "--data-dir",
    "--dataset",
    "--tfds-data-dir",
    "--resume",
    "--overwrite",
    "--checkpoint-every",
    "--steps-per-dispatch",
    "--max-steps",
    "--eval-batch-size",
    "--no-progress",
    "--no-cpu-tuning",
    "--coordinator-address",
    "--num-processes",
    "--process-id",
]


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main.parse_config(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    every_field = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(Config)]
    for flag in FLAGS + every_field:
        assert flag in out, flag


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--epochs", "0"], "argument --epochs: must be in [1, inf], got 0"),
        (["--batch-size", "-8"], "argument --batch-size: must be in [1, inf], got -8"),
        (["--learning-rate=-1e-3"], "argument --learning-rate: must be in [0.0, inf]"),
        (["--learning-rate", "nan"], "argument --learning-rate: must be in"),
        (["--decay", "1.0"], "argument --decay: must be in [0.0, 1.0), got 1.0"),
        (["--momentum", "1"], "argument --momentum: must be in [0.0, 1.0)"),
        (["--eps", "-1"], "argument --eps: must be in (0.0, inf]"),
        (["--epochs", "two"], "argument --epochs: 'two' is not a valid int"),
        (["--mlp-widths", "10,0"], "argument --mlp-widths: must be a non-empty tuple of integers"),
        (["--mlp-widths", "10,x"], "argument --mlp-widths: '10,x' is not comma-separated integers"),
        (["--max-steps", "0"], "argument --max-steps: must be in [1, inf], got 0"),
        (["--eval-batch-size", "0"], "argument --eval-batch-size: must be in [1, inf], got 0"),
        (["--num-processes", "0"], "argument --num-processes: must be in [1, inf], got 0"),
        (["--model", "resnet"], "argument --model: must be one of cnn, mlp, got 'resnet'"),
        (
            ["--checkpoint-every", "-5"],
            "argument --checkpoint-every: must be in [0, inf]",
        ),
    ],
)
def test_bad_numbers_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main.parse_config(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_config_from_flags():
    config, _ = main.parse_config(
        [
            "--model",
            "mlp",
            "--mlp-widths",
            "32,16",
            "--dataset",
            "kmnist",
            "--momentum",
            "0.9",
        ]
    )
    assert config.mlp_widths == (32, 16)
    assert config.dataset == "kmnist"
    assert config.momentum == 0.9
    default, _ = main.parse_config([])
    assert default == Config()  # the flags' defaults are the dataclass's
    assert default.dataset is None  # MNIST, or the bundled sample when tfds cannot give it


def test_batch_not_divisible_by_devices_is_refused(tmp_path, capsys):
    import jax

    if jax.device_count() == 1:
        pytest.skip("needs several devices")
    code = main.main(
        [
            "--batch-size",
            str(jax.device_count() + 1),
            "--data-dir",
            "examples/mnist/data",
            "--workdir",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "must be a multiple of the 8 devices" in capsys.readouterr().err
