"""Training runs end to end: outputs, accuracy on real data, devices, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from examples.mnist import input_pipeline, train
from examples.mnist.checkpoints import CheckpointError
from examples.mnist.config import Config
from examples.mnist.tests import helpers


def _config(tmp_path, **kw) -> Config:
    base = dict(
        model="mlp",
        mlp_widths=(32,),
        epochs=2,
        batch_size=64,
        learning_rate=3e-3,
        workdir=str(tmp_path),
        progress=False,
        checkpoint_every=40,
    )
    base.update(kw)
    return Config(**base)


@pytest.fixture(scope="module")
def sample():
    return input_pipeline.load_bundled_sample()


def test_trains_and_writes_every_output(tmp_path, sample):
    """In-process, on the 8 simulated devices of the test session."""
    summary = train.train_and_evaluate(_config(tmp_path), sample, log=lambda _: None)
    assert summary["test_accuracy"] > 0.85
    for key in (
        "test_accuracy",
        "test_loss",
        "epochs",
        "steps",
        "wall_time_s",
        "examples_per_sec",
        "devices",
        "dataset",
    ):
        assert key in summary, key
    assert len(summary["devices"]) == jax.device_count()
    records = helpers.metrics(str(tmp_path), drop=())
    assert [r["step"] for r in records] == [156, 312]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    for key in (
        "epoch",
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "learning_rate",
        "examples_per_sec",
        "effective_step_size",
    ):
        assert key in records[0], key
    q = records[0]["effective_step_size"]["layers/0/kernel"]
    assert 0 < q["p0"] <= q["p10"] <= q["p50"] <= q["p90"] <= q["p100"]
    for name in (
        "summary.json",
        "metrics.jsonl",
        "curves.png",
        "effective_step_sizes.png",
        "config.json",
    ):
        assert os.path.getsize(tmp_path / name) > 0, name
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))


@pytest.mark.skipif(not os.path.isdir(helpers.SHARED_MNIST), reason="no ../shared MNIST")
def test_cnn_on_real_mnist_few_hundred_steps(tmp_path):
    result = helpers.run_trainer(
        "--data-dir",
        helpers.SHARED_MNIST,
        "--max-steps",
        "240",
        "--epochs",
        "1",
        "--workdir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 240 and summary["test_accuracy"] > 0.95
    assert summary["dataset"].startswith("IDX files in")


def test_eight_devices_match_one_device(tmp_path):
    flags = (
        "--model",
        "mlp",
        "--mlp-widths",
        "64",
        "--data-dir",
        helpers.SAMPLE,
        "--max-steps",
        "48",
        "--epochs",
        "1",
        "--batch-size",
        "64",
    )
    runs = {}
    for devices in (1, 8):
        workdir = tmp_path / f"d{devices}"
        result = helpers.run_trainer(*flags, "--workdir", str(workdir), devices=devices)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[devices] = json.loads((workdir / "summary.json").read_text())
        assert len(runs[devices]["devices"]) == devices
    # Same global batch and data order: the same run up to float32 reassociation
    # of the gradient's sum over the batch.
    assert runs[1]["test_loss"] == pytest.approx(runs[8]["test_loss"], rel=1e-4)
    a, b = helpers.metrics(str(tmp_path / "d1")), helpers.metrics(str(tmp_path / "d8"))
    assert a[-1]["train_loss"] == pytest.approx(b[-1]["train_loss"], rel=1e-4)


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    flags = (
        "--data-dir",
        helpers.SAMPLE,
        "--max-steps",
        "64",
        "--epochs",
        "1",
        "--checkpoint-every",
        "16",
        "--steps-per-dispatch",
        "4",
    )
    straight = tmp_path / "straight"
    result = helpers.run_trainer(*flags, "--workdir", str(straight))
    assert result.returncode == 0, result.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        helpers.trainer_command(*flags, "--workdir", str(killed)),
        cwd=helpers.ROOT,
        env=helpers.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpts = killed / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        steps = [int(d) for d in os.listdir(ckpts) if d.isdigit()] if ckpts.exists() else []
        if steps and max(steps) >= 32:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()

    result = helpers.run_trainer(*flags, "--workdir", str(killed), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resumed from the checkpoint at step" in result.stdout
    assert helpers.metrics(str(killed)) == helpers.metrics(str(straight))
    final = [_restore(d / "checkpoints" / "64") for d in (straight, killed)]
    for a, b in zip(jax.tree.leaves(final[0]), jax.tree.leaves(final[1]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_int8_state_trains_and_resumes_exactly(tmp_path):
    # 8-bit optimizer state (codes and scales) goes through the checkpoint: a
    # run stopped at step 16 and resumed matches a straight run of 32 steps.
    flags = ("--data-dir", helpers.SAMPLE, "--epochs", "1", "--state-dtype", "int8",
             "--checkpoint-every", "16", "--steps-per-dispatch", "8")  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    for workdir, runs in (
        (straight, [("--max-steps", "32")]),
        (split, [("--max-steps", "16"), ("--max-steps", "32", "--resume")]),
    ):
        for extra in runs:
            result = helpers.run_trainer(*flags, *extra, "--workdir", str(workdir))
            assert result.returncode == 0, result.stderr[-3000:]  # fmt: skip
    # The stopped run also evaluated at its last step, 16; step 32 must agree.
    assert helpers.metrics(str(split))[-1] == helpers.metrics(str(straight))[-1]
    final = [_restore(d / "checkpoints" / "32") for d in (straight, split)]
    leaves = [jax.tree.leaves(f) for f in final]
    assert any(leaf.dtype == np.uint8 for leaf in leaves[0])  # nu codes were saved
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_array_equal(a, b)


def _restore(path):
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.abspath(path / "default"))


def test_resume_with_other_settings_is_refused(tmp_path, sample):
    config = _config(tmp_path, epochs=1, max_steps=8)
    train.train_and_evaluate(config, sample, log=lambda _: None)
    changed = dataclasses.replace(config, learning_rate=1.0, resume=True)
    with pytest.raises(CheckpointError, match="learning_rate: 0.003 then, 1.0 now"):
        train.train_and_evaluate(changed, sample, log=lambda _: None)


def test_corrupt_checkpoint_gets_a_clear_error(tmp_path, sample):
    config = _config(tmp_path, epochs=1, max_steps=8)
    train.train_and_evaluate(config, sample, log=lambda _: None)
    for root, _, files in os.walk(tmp_path / "checkpoints" / "8"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    with pytest.raises(CheckpointError, match="cannot be restored"):
        train.train_and_evaluate(
            dataclasses.replace(config, resume=True), sample, log=lambda _: None
        )


def test_two_processes_agree_with_one(tmp_path):
    """jax.distributed on loopback with gloo CPU collectives: 2 processes x 1 device."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = ("--model", "mlp", "--mlp-widths", "64", "--data-dir", helpers.SAMPLE,
             "--max-steps", "24", "--epochs", "1", "--batch-size", "64",
             "--checkpoint-every", "0")  # fmt: skip
    multi = tmp_path / "multi"
    procs = [
        subprocess.Popen(
            helpers.trainer_command(
                *flags,
                "--workdir",
                str(multi),
                "--coordinator-address",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ),
            cwd=helpers.ROOT,
            env=helpers.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    single = tmp_path / "single"
    result = helpers.run_trainer(*flags, "--workdir", str(single), devices=2)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads((d / "summary.json").read_text()) for d in (multi, single)]
    assert len(summaries[0]["devices"]) == 2
    assert summaries[0]["test_loss"] == pytest.approx(summaries[1]["test_loss"], rel=1e-5)
    assert helpers.metrics(str(multi))[-1]["train_loss"] == pytest.approx(
        helpers.metrics(str(single))[-1]["train_loss"], rel=1e-5
    )


def test_a_new_run_replaces_the_old_checkpoints(tmp_path, sample):
    train.train_and_evaluate(_config(tmp_path, epochs=1, max_steps=8), sample, log=lambda _: None)
    messages = []
    train.train_and_evaluate(_config(tmp_path, epochs=1, max_steps=4), sample, log=messages.append)
    assert any("removed 1 checkpoint(s) of the previous run" in m for m in messages)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
    assert [r["step"] for r in helpers.metrics(str(tmp_path))] == [4]


def test_chunks_restart_at_each_epoch_and_stop_at_the_end():
    config = Config(model="mlp", mlp_widths=(4,), steps_per_dispatch=4, max_steps=25)
    trainer = train.Trainer(config, train.make_mesh(), steps_per_epoch=10)
    ends, step = [], 0
    while step < trainer.total_steps:
        step = trainer.chunk_end(step)
        ends.append(step)
    assert ends == [4, 8, 10, 14, 18, 20, 24, 25]
    for start, end in zip([0, *ends], ends, strict=False):  # resumed at any boundary
        assert trainer.chunk_end(start) == end


@pytest.mark.parametrize(
    "previous,step,every,due",
    [(0, 8, 40, False), (32, 40, 40, True), (38, 46, 40, True), (40, 48, 40, False),
     (0, 8, 0, False), (0, 8, 1, True)],
)  # fmt: skip
def test_checkpoint_is_due_when_a_multiple_is_crossed(previous, step, every, due):
    assert train.checkpoint_due(previous, step, every) is due


def test_batch_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="must be a multiple of the 8 devices"):
        train.steps_per_epoch(Config(batch_size=12), 1000, 8)
    with pytest.raises(ValueError, match="larger than the 100 training examples"):
        train.steps_per_epoch(Config(batch_size=128), 100, 8)
    assert train.steps_per_epoch(Config(batch_size=64), 1000, 8) == 15
