"""The accelerator check runs end to end in its small mode (as CI runs it on the CPU)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_accelerator_check_small_mode(tmp_path):
    pytest.importorskip("flax")  # the trainer part
    cmd = [sys.executable, "-m", "benchmarks.accelerator", "--small", "--out", str(tmp_path),
           "--sizes", "1e4", "--leaves", "1", "3", "--rounds", "1"]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    payload = json.loads((tmp_path / "accelerator.json").read_text())
    tests = payload["tests"]
    assert tests["failures"] == tests["errors"] == 0 and tests["passed"] >= 40, tests
    assert payload["pallas_matches"] is True  # the kernel computes the library's step
    contenders = {(r["leaves"], r["contender"]) for r in payload["steps"]}
    assert {
        (1, "stream"),
        (1, "optax_rmsprop f32 state"),
        (1, "optax.rmsprop"),
        (1, "pallas one-pass kernel"),
        (3, "optax_rmsprop f32, optax.flatten"),
    } <= contenders
    for row in payload["steps"]:
        assert row["median_s"] > 0 and row["xla_bytes"] >= 0, row
    assert 0.1 < payload["trainer"]["test_accuracy"] <= 1.0
    table = (tmp_path / "accelerator.md").read_text()
    assert "| 1e+04 | 3 | optax.rmsprop |" in table and "**Trainer**" in table
