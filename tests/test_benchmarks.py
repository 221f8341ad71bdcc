"""The benchmarks run as a user runs them, in small mode, and their deterministic figures hold.

Each runs in a subprocess (``python -m benchmarks.X --small --out DIR``) and the JSON it
writes is checked; nothing is imported from ``benchmarks``. Times are never asserted
(they move with the machine); XLA's cost and memory analyses are deterministic, so
those figures are, and so is the schema of what each benchmark writes. The guards
(``--check``) bound full-size times, so small mode neither shows nor checks them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
STATES = ["float32", "bfloat16", "int8", "int4"]
# optimizer_step's contenders with a compiled step (XLA's figures beside their times).
STEPPERS = ["optax_rmsprop", "optax_rmsprop bf16 state", "optax", "optax again"]
TORCH_STEPS = ["torch foreach", "torch for-loop"]
# A donated float32 step, bytes per parameter at its peak (its arguments: params,
# grads and state; no temporaries): 12 plain, +4 a momentum buffer, +4 a mean.
FLOAT32_PEAK = {"plain": 12, "momentum": 16, "centered + momentum": 20}
GUARDED = ["compile_time", "state_precision"]  # the benchmarks with --check
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _command(module: str, out: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", f"benchmarks.{module}", "--out", str(out), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def _run(module: str, out: pathlib.Path, *args: str) -> dict:
    """Runs ``python -m benchmarks.<module> --out out *args``; returns the JSON it wrote.

    Its Markdown must hold a table, and no guard: guards bound full-size times only.
    """
    run = _command(module, out, *args)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    markdown = (out / f"{module}.md").read_text()
    assert markdown.count("|---") >= 1 and not re.search(r"\([≤>] [\d.]+x\)", markdown)
    return json.loads((out / f"{module}.json").read_text())


def _assert_peak_rows(rows: list[dict]) -> None:
    """state_precision's peak memory: a float32 step holds its arguments and nothing else."""
    assert [(r["step"], r["state"]) for r in rows] == [
        (step, state) for step in FLOAT32_PEAK for state in STATES
    ]
    for r in rows:
        assert r["peak"] >= r["arguments"] and r["temporaries"] >= 0, r
        if r["state"] == "float32":
            assert r["temporaries"] == 0, r
            assert round(r["peak"], 2) == round(r["arguments"], 2) == FLOAT32_PEAK[r["step"]], r
        else:  # low-precision state holds less at rest than float32 state
            assert r["arguments"] < FLOAT32_PEAK[r["step"]], r


def _assert_step_rows(rows: list[dict], torch: bool) -> None:
    """optimizer_step's rows: the library's step moves exactly the bytes optax's moves."""
    by = {(r["n"], r["leaves"], r["contender"]): r for r in rows}
    for n, leaves in {(n, leaves) for n, leaves, _ in by}:
        names = [name for m, k, name in by if (m, k) == (n, leaves)]
        assert names == [*STEPPERS, "roofline (p + g)"] + TORCH_STEPS * torch
        optax_row = by[n, leaves, "optax"]
        for name in ("optax_rmsprop", "optax again"):
            assert by[n, leaves, name]["xla_bytes"] == optax_row["xla_bytes"]
            assert by[n, leaves, name]["kernels"] == optax_row["kernels"]
        for name in STEPPERS:  # no step moves less than it must
            assert by[n, leaves, name]["xla_bytes"] >= by[n, leaves, name]["bytes_per_param"]
        bf16 = by[n, leaves, "optax_rmsprop bf16 state"]
        assert bf16["xla_bytes"] < by[n, leaves, "optax_rmsprop"]["xla_bytes"]


@pytest.mark.slow
def test_optimizer_step_small_mode(tmp_path):
    payload = _run("optimizer_step", tmp_path, "--small", "--sizes", "1e4", "--leaves", "1", "3")
    rows = payload["rows"]
    assert {(r["n"], r["leaves"]) for r in rows} == {(10_000, 1), (10_000, 3)}
    _assert_step_rows(rows, HAS_TORCH and payload["machine"]["backend"] == "cpu")
    assert all(len(r["samples"]) == 2 for r in rows)  # --small: 2 interleaved rounds
    assert (tmp_path / "optimizer_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
        assert rows["float32"]["time_over_float32"] == 1.0
    for state in STATES:  # momentum's buffer is stored like the RMS state
        plain, momentum = (payload["jax"][k][state] for k in ("plain", "momentum 0.9"))
        assert momentum["state_bytes_per_param"] == pytest.approx(
            2 * plain["state_bytes_per_param"], rel=0.01
        )
    assert payload["torch"] == {"plain": {}, "momentum 0.9": {}}  # small: no child processes
    _assert_peak_rows(payload["peak_memory"])
    assert set(payload["accuracy"]) == {"int8", "int4"}
    for a in payload["accuracy"].values():
        assert a["drift_steps"] == 200 and 0 < a["drift"] < 0.1, a
        assert 0 < a["per_step_mean_rel_error_max"] < 1e-4, a


@pytest.mark.parametrize("module", GUARDED)
def test_check_refuses_small_mode(module, tmp_path):
    run = _command(module, tmp_path, "--small", "--check")
    assert run.returncode == 2, (run.stdout + run.stderr)[-3000:]  # argparse's usage error
    assert "--check: the guards are set for the full sizes" in run.stderr
    assert not list(tmp_path.iterdir())  # refused before measuring anything


@pytest.mark.slow
def test_trainer_throughput_small_mode(tmp_path):
    pytest.importorskip("flax")
    data = str(ROOT / "examples" / "mnist" / "data")  # the bundled sample, through its reader
    payload = _run("trainer_throughput", tmp_path, "--small", "--mnist-dir", data)
    torch = HAS_TORCH and payload["machine"]["backend"] == "cpu"
    assert payload["steps"] == 16
    assert list(payload["examples_per_sec"]) == ["jax"] + ["torch"] * torch
    assert all(len(rates) == 1 for rates in payload["examples_per_sec"].values())
    rates = payload["examples_per_sec"]
    if torch:
        assert math.isclose(payload["jax_over_torch"], rates["jax"][0] / rates["torch"][0])
    else:
        assert "jax_over_torch" not in payload


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
    _assert_step_rows(parts["steps"], torch=False)  # the accelerator times JAX only
    assert {(r["n"], r["leaves"]) for r in parts["steps"]} == {(10_000, 1), (10_000, 10)}
    assert parts["trainer"]["steps"] == 16 and 0.1 < parts["trainer"]["test_accuracy"] <= 1
