"""The benchmarks run end to end in their small modes, and their deterministic figures hold.

Times are never asserted (they move with the machine); XLA's cost and memory
analyses are deterministic, so those figures are, and so is the schema of
what each benchmark writes.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import optimizer_step, state_precision, trainer_throughput

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A donated float32 step, bytes per parameter at its peak (its arguments: params,
# grads and state; no temporaries): 12 plain, +4 a momentum buffer, +4 a mean.
FLOAT32_PEAK = {"plain": 12, "momentum": 16, "centered + momentum": 20}
STATES = list(state_precision.PRECISIONS)


def _run(module: str, out: pathlib.Path, *args: str) -> dict:
    """Runs ``python -m benchmarks.<module> --out out *args``; returns the JSON it wrote."""
    cmd = [sys.executable, "-m", f"benchmarks.{module}", "--out", str(out), *args]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert (out / f"{module}.md").read_text().count("|---") >= 1
    return json.loads((out / f"{module}.json").read_text())


def _assert_peak_rows(rows: list[dict]) -> None:
    assert [(r["step"], r["state"]) for r in rows] == [
        (step, state) for step in FLOAT32_PEAK for state in STATES
    ]
    for r in rows:
        assert r["peak"] >= r["arguments"] and r["temporaries"] >= 0, r
        if r["state"] == "float32":
            assert r["temporaries"] == 0, r
            assert round(r["peak"], 2) == round(r["arguments"], 2) == FLOAT32_PEAK[r["step"]], r


def _assert_step_rows(rows: list[dict]) -> None:
    """``optimizer_step.measure``'s rows: the library's step moves exactly optax's bytes."""
    by = {(r["n"], r["leaves"], r["contender"]): r for r in rows}
    for (n, leaves, name), r in by.items():
        optax_row = by[n, leaves, "optax"]
        if name in ("optax_rmsprop", "optax again"):
            assert r["xla_bytes"] == optax_row["xla_bytes"], (r, optax_row)
            assert r["kernels"] == optax_row["kernels"], (r, optax_row)
        if name in optimizer_step.CONTENDERS:  # no step moves less than it must
            assert r["xla_bytes"] >= r["bytes_per_param"], r
    for n, leaves, name in by:
        if name == "optax_rmsprop bf16 state":  # 2 state bytes instead of 4
            assert by[n, leaves, name]["xla_bytes"] < by[n, leaves, "optax_rmsprop"]["xla_bytes"]


def test_step_moves_the_bytes_optax_moves():
    rows = optimizer_step.measure(4096, 3, rounds=1)
    assert {r["contender"] for r in rows} == {*optimizer_step.CONTENDERS, "roofline (p + g)"}
    _assert_step_rows(rows)


@pytest.mark.slow
def test_float32_step_peak_is_its_arguments():
    _assert_peak_rows(state_precision.peak_memory(2, (256, 256)))


@pytest.mark.slow
def test_optimizer_step_small_mode(tmp_path):
    payload = _run("optimizer_step", tmp_path, "--small", "--sizes", "1e4", "--leaves", "1", "3")
    assert {(r["n"], r["leaves"]) for r in payload["rows"]} == {(10_000, 1), (10_000, 3)}
    _assert_step_rows(payload["rows"])
    assert (tmp_path / "optimizer_step.png").stat().st_size > 0


@pytest.mark.slow
def test_compile_time_small_mode(tmp_path):
    payload = _run("compile_time", tmp_path, "--small", "--leaves", "3")
    assert [r["leaves"] for r in payload["rows"]] == [3]
    precisions = payload["precisions"]
    assert [r["state"] for r in precisions["rows"]] == STATES
    assert precisions["rows"][0]["compile_over_float32"] == 1.0
    assert precisions["step_leaves"] == 10 and precisions["init_shape"] == [512, 512]


@pytest.mark.slow
def test_state_precision_small_mode(tmp_path):
    payload = _run("state_precision", tmp_path, "--small", "--rounds", "1")
    for rows in payload["jax"].values():
        assert list(rows) == STATES
        assert rows["float32"]["rms_bytes_per_param"] == 4.0
        assert rows["bfloat16"]["rms_bytes_per_param"] == pytest.approx(2.0, abs=0.01)
        assert rows["int8"]["rms_bytes_per_param"] < 1.05  # a quarter of float32's, and scales
        assert rows["int4"]["rms_bytes_per_param"] < 0.55  # an eighth, and scales
    assert payload["torch"] == {"plain": {}, "momentum 0.9": {}}  # small: no child processes
    _assert_peak_rows(payload["peak_memory"])
    assert set(payload["accuracy"]) == {"int8", "int4"}
    assert all(a["drift_steps"] == 200 and a["drift"] < 0.1 for a in payload["accuracy"].values())


def test_read_idx_reads_mnist_files(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + images.tobytes())
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 3]))
    got_images, got_labels = trainer_throughput.mnist(str(tmp_path), "train")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, [7, 3])


@pytest.mark.slow
def test_trainer_throughput_small_mode(tmp_path):
    pytest.importorskip("flax")
    torch = importlib.util.find_spec("torch") is not None
    payload = _run("trainer_throughput", tmp_path, "--small")
    assert payload["steps"] == 16
    assert list(payload["examples_per_sec"]) == ["jax"] + ["torch"] * torch
    assert all(len(rates) == 1 for rates in payload["examples_per_sec"].values())
    assert ("jax_over_torch" in payload) == torch


@pytest.mark.slow
def test_accelerator_small_mode(tmp_path):
    pytest.importorskip("flax")  # the trainer part
    args = ["--small", "--rounds", "1", "--sizes", "1e4", "--skip", "memory", "compile"]
    tests = "tests/test_recipes.py::test_tf1_recipes_match_tensorflow_v1"
    parts = _run("accelerator", tmp_path, *args, "--test-files", tests)["parts"]
    assert list(parts) == ["tests", "precision", "steps", "trainer"]
    assert parts["tests"]["failures"] == parts["tests"]["errors"] == 0, parts["tests"]
    assert parts["tests"]["passed"] == 3
    assert [list(parts["precision"][k]) for k in ("plain", "momentum 0.9")] == [STATES] * 2
    _assert_step_rows(parts["steps"])
    assert {(r["n"], r["leaves"]) for r in parts["steps"]} == {(10_000, 1), (10_000, 10)}
    assert parts["trainer"]["steps"] == 16 and 0.1 < parts["trainer"]["test_accuracy"] <= 1
