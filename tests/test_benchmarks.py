"""The benchmarks run end to end in their small modes, and their deterministic figures hold.

Times are never asserted (they move with the machine); XLA's cost and memory
analyses are deterministic, so those figures are.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from benchmarks import state_precision

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A donated float32 step, bytes per parameter at its peak (its arguments: params,
# grads and state; no temporaries): 12 plain, +4 a momentum buffer, +4 a mean.
FLOAT32_PEAK = {"plain": 12, "momentum": 16, "centered + momentum": 20}


def _run(module: str, out: pathlib.Path, *args: str) -> dict:
    """Runs ``python -m benchmarks.<module> --out out *args``; returns its JSON."""
    cmd = [sys.executable, "-m", f"benchmarks.{module}", "--out", str(out), *args]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    return json.loads((out / f"{module}.json").read_text())


def _assert_float32_peak(rows: list[dict]) -> None:
    for r in (r for r in rows if r["state"] == "float32"):
        assert r["temporaries"] == 0, r
        assert round(r["peak"], 2) == round(r["arguments"], 2) == FLOAT32_PEAK[r["step"]], r


def test_float32_step_peak_is_its_arguments():
    rows = state_precision.peak_memory(2, (256, 256), {"float32": None})
    assert [r["step"] for r in rows] == list(FLOAT32_PEAK)
    _assert_float32_peak(rows)


@pytest.mark.slow
def test_accelerator_check_small_mode(tmp_path):
    pytest.importorskip("flax")  # the trainer part
    payload = _run(
        "accelerator", tmp_path, "--small", "--sizes", "1e4", "--leaves", "1", "3", "--rounds", "1"
    )
    tests = payload["tests"]
    assert tests["failures"] == tests["errors"] == 0 and tests["passed"] >= 40, tests
    assert payload["pallas_matches"] is True  # the kernel computes the library's step
    steps = {(r["leaves"], r["contender"]): r for r in payload["steps"]}
    assert {
        (1, "stream"),
        (1, "optax_rmsprop f32 state"),
        (1, "optax.rmsprop"),
        (1, "pallas one-pass kernel"),
        (3, "optax_rmsprop f32, optax.flatten"),
    } <= set(steps)
    for (leaves, name), row in steps.items():
        assert row["median_s"] > 0, row
        if name == "stream":  # x * 2: reads and writes each float32 once (and a constant)
            assert 8 * row["n"] <= row["xla_bytes"] <= 8 * (row["n"] + leaves), row
        elif name != "pallas one-pass kernel":  # (a custom call's traffic is not counted)
            # No step moves less than it must read and write, nor more than optax's.
            assert row["bytes_per_param"] * row["n"] <= row["xla_bytes"], row
        if name == "optax_rmsprop f32 state":
            assert row["xla_bytes"] <= steps[leaves, "optax.rmsprop"]["xla_bytes"], row
    assert len(payload["peak_memory"]) == 9
    _assert_float32_peak(payload["peak_memory"])
    assert 0.1 < payload["trainer"]["test_accuracy"] <= 1.0
    table = (tmp_path / "accelerator.md").read_text()
    assert "| 1e+04 | 3 | optax.rmsprop |" in table and "**Trainer**" in table
    assert "| centered + momentum | int8 |" in table


@pytest.mark.slow
def test_compile_time_small_mode(tmp_path):
    payload = _run("compile_time", tmp_path, "--small", "--leaves", "3")
    assert [r["leaves"] for r in payload["rows"]] == [3]
    rows = payload["precisions"]["rows"]
    assert [r["state"] for r in rows] == ["float32", "bfloat16", "int8"]
    assert all(r["compile_s"] > 0 and r["jit_init_s"] > 0 and r["eager_init_s"] > 0 for r in rows)
    assert "| int8 |" in (tmp_path / "compile_time.md").read_text()


@pytest.mark.slow
def test_state_precision_small_mode(tmp_path):
    payload = _run("state_precision", tmp_path, "--small", "--rounds", "1")
    rows = payload["jax"]["plain"]
    assert rows["float32"]["state_bytes_per_param"] == 4.0
    assert rows["bfloat16"]["state_bytes_per_param"] == 2.0
    assert rows["int8"]["state_bytes_per_param"] < 1.25  # a quarter of float32's, and scales
    _assert_float32_peak(payload["peak_memory"])
    assert {(r["step"], r["state"]) for r in payload["peak_memory"]} == {
        (step, state) for step in FLOAT32_PEAK for state in state_precision.PRECISIONS
    }
    assert payload["accuracy"]["drift_1000_steps"] < 0.05
    assert "| centered + momentum | int8 |" in (tmp_path / "state_precision.md").read_text()
