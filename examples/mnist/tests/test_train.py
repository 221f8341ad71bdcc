"""Training runs end to end: outputs, accuracy on real data, devices, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import time

import jax
import numpy as np
import optax
import pytest

from examples.mnist import input_pipeline, train
from examples.mnist.config import Config
from examples.mnist.robust import checkpoints, divergence, workdir_lock
from examples.mnist.robust.checkpoints import CheckpointError
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


@pytest.mark.slow
def test_trains_and_writes_every_output(tmp_path, sample):
    """In-process, on the 8 simulated devices of the test session."""
    summary = train.train_and_evaluate(_config(tmp_path), sample, log=lambda _: None)
    assert summary["test_accuracy"] > 0.85 and 0 < summary["test_loss"] < 0.6
    assert (summary["epochs"], summary["steps"]) == (2, 312)  # 10,000 // 64 steps per epoch
    assert summary["wall_time_s"] >= summary["train_time_s"] > 0 and summary["examples_per_sec"] > 0
    assert summary["dataset"].startswith("bundled MNIST sample")
    assert summary["config"]["learning_rate"] == 3e-3
    assert len(summary["devices"]) == jax.device_count()
    records = helpers.metrics(str(tmp_path), drop=())
    assert [r["step"] for r in records] == [156, 312]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert [r["epoch"] for r in records] == [1, 2]
    assert 3e-3 > records[0]["learning_rate"] > records[1]["learning_rate"] >= 0  # cosine decay
    assert all(r["examples_per_sec"] > 0 for r in records)
    assert all(0.85 < r["test_accuracy"] <= 1 and 0.5 < r["train_accuracy"] <= 1 for r in records)
    assert records[-1]["test_loss"] == summary["test_loss"]
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path):
    flags = (*TWO_PROCESS_FLAGS, "--max-steps", "48")
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


# A run short enough to interrupt mid-way: 16 dispatches of 4 steps, a checkpoint every 16.
RESUMABLE = (
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


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The uninterrupted run that interrupted-then-resumed runs must reproduce bitwise."""
    workdir = tmp_path_factory.mktemp("straight")
    result = helpers.run_trainer(*RESUMABLE, "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def _assert_same_run(workdir, straight) -> None:
    assert helpers.metrics(str(workdir)) == helpers.metrics(str(straight))
    final = [helpers.restore(d / "checkpoints" / "64") for d in (straight, workdir)]
    for a, b in zip(jax.tree.leaves(final[0]), jax.tree.leaves(final[1]), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, straight_run):
    """Also: a second run into a busy workdir is refused; kill -9 leaves no stale lock."""
    killed = tmp_path / "killed"
    proc = helpers.start_and_wait_for_checkpoint(*RESUMABLE, workdir=str(killed), min_step=32)
    second = helpers.run_trainer(*RESUMABLE, "--workdir", str(killed), "--resume")
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"is in use by another run (pid {proc.pid} on" in second.stderr
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)  # a paused process dies at once
    proc.wait()
    assert not (killed / "summary.json").exists()

    result = helpers.run_trainer(*RESUMABLE, "--workdir", str(killed), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resumed from the checkpoint at step" in result.stdout
    _assert_same_run(killed, straight_run)


@pytest.mark.slow
def test_sigterm_saves_where_it_stopped_and_resumes_bitwise(tmp_path, straight_run):
    workdir = tmp_path / "preempted"
    proc = helpers.start_and_wait_for_checkpoint(*RESUMABLE, workdir=str(workdir), min_step=16)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)  # delivered when the paused run continues
    proc.send_signal(signal.SIGCONT)
    stderr = proc.communicate(timeout=120)[1]
    print(f"SIGTERM to exit: {time.perf_counter() - sent:.2f} s")  # reported, not asserted
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("Stopped by SIGTERM")]
    stopped = int(line.split(" at step ")[1].split()[0])
    # The run is paused once checkpoint 16 exists, so it may stop there or a dispatch later.
    assert 16 <= stopped < 64 and stopped % 4 == 0, line
    assert f"checkpoint saved in {workdir / 'checkpoints' / str(stopped)}" in line
    assert "Resume with the same command: python -m examples.mnist --no-progress" in line
    assert (workdir / "checkpoints" / str(stopped)).is_dir()
    assert not (workdir / "summary.json").exists()

    result = helpers.run_trainer(*RESUMABLE, "--workdir", str(workdir))  # no --resume needed
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resumed from the checkpoint at step {stopped}." in result.stdout
    _assert_same_run(workdir, straight_run)


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, straight_run):
    workdir = tmp_path / "damaged"
    first = helpers.run_trainer(*RESUMABLE, "--workdir", str(workdir), "--max-steps", "48")
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["32", "48"]
    _corrupt(workdir / "checkpoints" / "48")

    result = helpers.run_trainer(*RESUMABLE, "--workdir", str(workdir), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning: the checkpoint at step 48 is damaged" in result.stdout
    assert "Resumed from the checkpoint at step 32." in result.stdout
    (moved,) = os.listdir(workdir / "damaged_checkpoints")
    assert moved.startswith("48-")
    # metrics.jsonl drops what the lost steps wrote, and the rest is replayed exactly.
    _assert_same_run(workdir, straight_run)


def _corrupt(step_dir) -> None:
    for root, _, files in os.walk(step_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")


@pytest.mark.slow
def test_int8_state_trains_and_resumes_exactly(tmp_path):
    # 8-bit optimizer state (codes and scales) goes through the checkpoint: a
    # run stopped at step 16 and resumed matches a straight run of 32 steps.
    flags = (
        "--model",
        "mlp",  # its 784 x 10 kernel is quantized; the CNN's resume is tested above
        "--data-dir",
        helpers.SAMPLE,
        "--epochs",
        "1",
        "--state-dtype",
        "int8",
        "--checkpoint-every",
        "16",
        "--steps-per-dispatch",
        "8",
    )
    straight, split = tmp_path / "straight", tmp_path / "split"
    for workdir, runs in (
        (straight, [("--max-steps", "32")]),
        (split, [("--max-steps", "16"), ("--max-steps", "32", "--resume")]),
    ):
        for extra in runs:
            result = helpers.run_trainer(*flags, *extra, "--workdir", str(workdir))
            assert result.returncode == 0, result.stderr[-3000:]
    # The stopped run also evaluated at its last step, 16; step 32 must agree.
    assert helpers.metrics(str(split))[-1] == helpers.metrics(str(straight))[-1]
    final = [helpers.restore(d / "checkpoints" / "32") for d in (straight, split)]
    leaves = [jax.tree.leaves(f) for f in final]
    assert any(leaf.dtype == np.uint8 for leaf in leaves[0])  # nu codes were saved
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("rounding", ["stochastic", "compensated"])
def test_bfloat16_params_train_and_resume_exactly(tmp_path, rounding):
    # bfloat16 parameters and param_rounding's state (the step count that seeds the
    # stochastic rounding, or the remainders) go through the checkpoint.
    flags = ("--model", "mlp", "--data-dir", helpers.SAMPLE, "--epochs", "1")
    flags += ("--param-dtype", "bfloat16", "--param-rounding", rounding, "--state-dtype", "int8")
    flags += ("--checkpoint-every", "8", "--steps-per-dispatch", "8")
    straight, split = tmp_path / "straight", tmp_path / "split"
    for workdir, runs in (
        (straight, [("--max-steps", "16")]),
        (split, [("--max-steps", "8"), ("--max-steps", "16", "--resume")]),
    ):
        for extra in runs:
            result = helpers.run_trainer(*flags, *extra, "--workdir", str(workdir))
            assert result.returncode == 0, result.stderr[-3000:]
    assert helpers.metrics(str(split))[-1] == helpers.metrics(str(straight))[-1]
    assert helpers.metrics(str(straight))[-1]["test_accuracy"] > 0.2  # chance: 0.1
    final = [jax.tree.leaves(helpers.restore(d / "checkpoints" / "16")) for d in (straight, split)]
    dtypes = {str(leaf.dtype) for leaf in final[0]}
    assert "bfloat16" in dtypes and ("int16" in dtypes) == (rounding == "compensated")
    for a, b in zip(*final, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(tmp_path, sample):
    config = _config(tmp_path, epochs=1, max_steps=8)
    train.train_and_evaluate(config, sample, log=lambda _: None)
    changed = dataclasses.replace(config, learning_rate=1.0, resume=True)
    with pytest.raises(CheckpointError, match="learning_rate: 0.003 then, 1.0 now"):
        train.train_and_evaluate(changed, sample, log=lambda _: None)


@pytest.mark.slow
def test_no_good_checkpoint_left_gets_a_clear_error(tmp_path, sample):
    config = _config(tmp_path, epochs=1, max_steps=8)
    train.train_and_evaluate(config, sample, log=lambda _: None)
    _corrupt(tmp_path / "checkpoints" / "8")
    with pytest.raises(CheckpointError, match="checkpoint 8 .* cannot be restored"):
        train.train_and_evaluate(
            dataclasses.replace(config, resume=True), sample, log=lambda _: None
        )


def _start_two_processes(*flags: str, workdir) -> list[subprocess.Popen]:
    """The trainer as 2 processes x 1 device: jax.distributed on loopback, gloo collectives."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = ("--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2")
    return [
        subprocess.Popen(
            helpers.trainer_command(
                *flags, "--workdir", str(workdir), *cluster, "--process-id", str(i)
            ),
            cwd=helpers.ROOT,
            env=helpers.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]


# A small MLP on the shipped sample, for the multi-device and multi-process runs.
TWO_PROCESS_FLAGS = (
    *"--model mlp --mlp-widths 64 --epochs 1 --batch-size 64 --data-dir".split(),
    helpers.SAMPLE,
)


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
    flags = (*TWO_PROCESS_FLAGS, "--max-steps", "24", "--checkpoint-every", "0")
    multi = tmp_path / "multi"
    procs = _start_two_processes(*flags, workdir=multi)
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


def _files(workdir) -> dict[str, bytes]:
    """Every file under ``workdir`` (but its lock) and its bytes."""
    return {
        str(p.relative_to(workdir)): p.read_bytes()
        for p in sorted(workdir.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.mark.slow
def test_a_rerun_continues_the_run_and_a_finished_one_reports_it(tmp_path, sample):
    first = train.train_and_evaluate(_config(tmp_path, epochs=1, max_steps=8), sample, log=print)
    before, messages = _files(tmp_path), []
    again = train.train_and_evaluate(
        _config(tmp_path, epochs=1, max_steps=8), sample, messages.append
    )
    assert again == json.loads(json.dumps(first))  # as summary.json holds it
    assert any("is finished (step 8 of 8); its summary:" in m for m in messages)
    assert _files(tmp_path) == {**before, "config.json": before["config.json"]}
    longer = _config(tmp_path, epochs=1, max_steps=16, checkpoint_every=8)
    train.train_and_evaluate(longer, sample, messages.append)
    assert "Resumed from the checkpoint at step 8" in messages[-4]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["16", "8"]
    assert [r["step"] for r in helpers.metrics(str(tmp_path))] == [8, 16]


@pytest.mark.slow
def test_other_settings_are_refused_and_only_overwrite_deletes_the_run(tmp_path, sample):
    train.train_and_evaluate(_config(tmp_path, epochs=1, max_steps=8), sample, log=print)
    before = _files(tmp_path)
    other = _config(tmp_path, epochs=1, max_steps=4, learning_rate=1e-2)
    with pytest.raises(CheckpointError, match="learning_rate: 0.003 then, 0.01 now") as err:
        train.train_and_evaluate(other, sample, log=print)
    assert "pass another --workdir" in str(err.value) and "pass --overwrite" in str(err.value)
    assert _files(tmp_path) == before
    messages = []
    train.train_and_evaluate(dataclasses.replace(other, overwrite=True), sample, messages.append)
    assert any(m.startswith("--overwrite: deleted the previous run") for m in messages)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
    assert [r["step"] for r in helpers.metrics(str(tmp_path))] == [4]


@pytest.mark.slow
def test_the_same_command_twice_keeps_every_checkpoint(tmp_path):
    flags = (*TWO_PROCESS_FLAGS, "--max-steps", "16", "--checkpoint-every", "8")
    first = helpers.run_trainer(*flags, "--workdir", str(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    before = _files(tmp_path)
    second = helpers.run_trainer(*flags, "--workdir", str(tmp_path))
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"The run in {tmp_path} is finished (step 16 of 16)" in second.stdout
    assert _files(tmp_path) == before
    other = helpers.run_trainer(*flags, "--learning-rate", "0.1", "--workdir", str(tmp_path))
    assert other.returncode == 2
    assert "pass another --workdir; to delete it and start afresh, pass --overwrite" in other.stderr
    assert _files(tmp_path) == before


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


@pytest.mark.parametrize("eval_batch_size", [1, 7, 500, 2000, 5000])
def test_evaluation_counts_every_test_example_once(sample, eval_batch_size):
    # Batches of a multiple of the 8 devices, and a short last one where they do not divide 2000.
    config = Config(model="mlp", mlp_widths=(8,), eval_batch_size=eval_batch_size)
    mesh = train.make_mesh()
    trainer = train.Trainer(config, mesh, steps_per_epoch=10)
    data = input_pipeline.put_on_devices(sample, mesh, eval_batch_size)
    got = trainer.evaluate(data)
    logits = trainer.model(sample.test_images.astype(np.float32) / 255.0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, sample.test_labels)
    assert got["test_loss"] == pytest.approx(float(losses.mean()), rel=1e-5)
    accuracy = float(np.mean(np.argmax(logits, -1) == sample.test_labels))
    assert got["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)


@pytest.mark.parametrize(
    "previous,step,every,due",
    [
        (0, 8, 40, False),
        (32, 40, 40, True),
        (38, 46, 40, True),
        (40, 48, 40, False),
        (0, 8, 0, False),
        (0, 8, 1, True),
    ],
)
def test_checkpoint_is_due_when_a_multiple_is_crossed(previous, step, every, due):
    assert checkpoints.checkpoint_due(previous, step, every, last_step=100) is due
    assert checkpoints.checkpoint_due(previous, 100, every, last_step=100)


def test_batch_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="must be a multiple of the 8 devices"):
        train.steps_per_epoch(Config(batch_size=12), 1000, 8)
    with pytest.raises(ValueError, match="larger than the 100 training examples"):
        train.steps_per_epoch(Config(batch_size=128), 100, 8)
    assert train.steps_per_epoch(Config(batch_size=64), 1000, 8) == 15


def _chunk(losses, params_finite=True) -> train.Chunk:
    return train.Chunk(np.asarray(losses, np.float64), params_finite, 0.1, len(losses))


def test_divergence_names_the_step_and_the_quantity():
    unused = lambda: pytest.fail("the layers are named only when a parameter is not finite")
    assert divergence.problem(_chunk([0.5, 0.4]), 10, unused) is None
    assert divergence.problem(_chunk([0.5, np.nan, np.inf]), 10, unused) == (
        "at step 12 the train loss is nan"
    )
    config = Config(model="mlp", mlp_widths=(4,))
    trainer = train.Trainer(config, train.make_mesh(), steps_per_epoch=10)
    kernel = trainer.model.layers[2].kernel
    kernel[0, 0] = np.inf  # Variable item assignment: flax 0.11 and 0.12 alike
    chunk = _chunk([0.5, 0.4], params_finite=False)
    assert divergence.problem(chunk, 10, trainer.non_finite_layers) == (
        "after step 12 parameters are not finite (layers/2/kernel)"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "num_train,expected,checkpoints",
    [  # 1 step per epoch: step 1's evaluation overflows (lr 1e38 makes the weights 1e38)
        (64, "at step 1 the test loss is nan", []),
        # 2 steps per epoch, a checkpoint after step 1: step 2's train loss overflows
        (128, "at step 2 the train loss is nan", ["1"]),
    ],
)
def test_divergence_stops_without_checkpointing_it(
    tmp_path, sample, num_train, expected, checkpoints
):
    tiny = dataclasses.replace(
        sample,
        train_images=sample.train_images[:num_train],
        train_labels=sample.train_labels[:num_train],
    )
    config = _config(
        tmp_path,
        epochs=5,
        learning_rate=1e38,
        schedule="constant",
        checkpoint_every=1,
        steps_per_dispatch=1,
    )
    with pytest.raises(divergence.Diverged, match=re.escape(expected)) as err:
        train.train_and_evaluate(config, tiny, log=lambda _: None)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == checkpoints
    if checkpoints:
        assert "the last good checkpoint is step 1" in str(err.value)
        saved = helpers.restore(tmp_path / "checkpoints" / "1")
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(saved))
    else:
        assert "no checkpoint was written before it" in str(err.value)
        # What was measured before the divergence stays.
        assert [r["step"] for r in helpers.metrics(str(tmp_path))] == [1]
    assert not (tmp_path / "summary.json").exists()


def test_a_second_run_in_a_busy_workdir_is_refused_naming_the_first(tmp_path, sample):
    with workdir_lock.hold(str(tmp_path)):
        with pytest.raises(
            workdir_lock.WorkdirBusy, match=f"in use by another run \\(pid {os.getpid()} on"
        ):
            train.train_and_evaluate(_config(tmp_path, max_steps=1), sample, log=lambda _: None)
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before touching anything
    with workdir_lock.hold(str(tmp_path)):  # released when its holder is done
        pass


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    """JAX's preemption sync: the process that got no signal stops at the same step."""
    workdir = tmp_path / "multi"
    flags = (
        *TWO_PROCESS_FLAGS,
        "--epochs",
        "20",
        "--checkpoint-every",
        "16",
        "--steps-per-dispatch",
        "2",
    )
    procs = _start_two_processes(*flags, workdir=workdir)
    ckpts, deadline = workdir / "checkpoints", time.time() + 300
    while not (ckpts.is_dir() and any(d.isdigit() for d in os.listdir(ckpts))):
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # process 0 gets nothing
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 128 + signal.SIGTERM, out[-3000:]
    (line,) = [ln for ln in outputs[0].splitlines() if ln.startswith("Stopped by")]
    assert "a preemption notice" in line, line
    stopped = line.split(" at step ")[1].split()[0]
    assert f"checkpoint saved in {ckpts / stopped}." in line
    assert (ckpts / stopped).is_dir()
