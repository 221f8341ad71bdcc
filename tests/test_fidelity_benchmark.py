"""``python -m benchmarks.fidelity --small`` runs and writes every layer's step ratios.

The figures themselves are not asserted here (tests/test_fidelity.py owns the
targets): only the structure, which is deterministic. Runs the benchmark in a
subprocess, as a user would, without importing ``benchmarks``.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
STATES = ("bfloat16", "float16", "int8", "int4")
CNN = {"conv2/kernel": 3 * 3 * 32 * 64, "dense1/kernel": 7 * 7 * 64 * 256}
# The transformer's vocabulary comes from the docs' text; these sizes do not.
TRANSFORMER = {"pos_embed": 64 * 64} | {
    f"blocks/{b}/{name}/kernel": size
    for b in range(2)
    for name, size in (
        ("qkv", 64 * 192),
        ("proj", 64 * 64),
        ("mlp_in", 64 * 256),
        ("mlp_out", 256 * 64),
    )
}


def check_percentiles(r: dict, where: str) -> None:
    figures = [r["p5"], r["p50"], r["p95"]]
    assert all(math.isfinite(x) and x > 0 for x in figures), (where, r)
    assert r["p5"] <= r["p50"] <= r["p95"], (where, r)
    assert r["count"] > 0 and 0 <= r["clipped"] <= 1, (where, r)


@pytest.mark.slow
def test_fidelity_small_mode(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.fidelity", "--small", "--out", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    payload = json.loads((tmp_path / "fidelity.json").read_text())
    assert (tmp_path / "fidelity.md").read_text().count("\n| ") >= 2 * (len(CNN) + 11)
    assert payload["small"] is True
    runs = {(r["model"], r["decay"]): r for r in payload["runs"]}
    assert set(runs) == {(m, d) for m in ("MNIST CNN", "char transformer") for d in (0.99, 0.999)}
    for (model, decay), r in runs.items():
        layers = r["layers"]
        if model == "MNIST CNN":
            assert {name: layer["size"] for name, layer in layers.items()} == CNN
            assert 0 <= r["test_accuracy"] <= 1
        else:
            assert set(layers) == set(TRANSFORMER) | {"embed", "unembed/kernel"}
            assert all(layers[name]["size"] == size for name, size in TRANSFORMER.items())
            vocab = layers["embed"]["size"] // 64
            assert layers["embed"]["size"] == layers["unembed/kernel"]["size"] == 64 * vocab
            assert vocab * 64 >= 4096  # the layers reported are the quantized ones
        assert math.isfinite(r["loss_first_50"]) and math.isfinite(r["loss_last_50"])
        for name, layer in layers.items():
            for state in STATES:
                check_percentiles(layer[state]["last_third"], (model, decay, name, state))
                assert len(layer[state]["thirds"]) == 3
                for t in layer[state]["thirds"]:
                    check_percentiles(t, (model, decay, name, state, "third"))
