"""The Colab notebook runs top to bottom on CPU with a small step budget."""

from __future__ import annotations

import os
import re

import pytest

from examples.mnist.tests import helpers

NOTEBOOK = os.path.join(helpers.ROOT, "examples", "mnist", "mnist_colab.ipynb")
MAX_STEPS = 24


def _run(monkeypatch, workdir) -> str:
    """Executes the notebook in a fresh kernel; the text of every code cell's output."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for key, value in helpers.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MNIST_MAX_STEPS", str(MAX_STEPS))
    monkeypatch.setenv("MNIST_DATA_DIR", helpers.SAMPLE)  # no traffic off the machine
    monkeypatch.setenv("MNIST_WORKDIR", str(workdir))  # not the repository's runs/colab
    monkeypatch.chdir(helpers.ROOT)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": helpers.ROOT}}
    )
    client.execute()
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1, "one figure: loss, accuracy, effective step sizes"
    return "".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )


@pytest.mark.slow
def test_notebook_executes(monkeypatch, tmp_path):
    outputs = _run(monkeypatch, tmp_path / "colab")
    assert "backend: cpu" in outputs
    # The tutorial's own loop trains and evaluates; the step sizes are those of the 4 layers.
    accuracy = re.search(rf"test accuracy after {MAX_STEPS} steps: ([0-9.]+)", outputs)
    assert accuracy and float(accuracy.group(1)) > 0.5, outputs[-3000:]
    # Each state precision is sized, and 8-bit is the smallest.
    sizes = dict(re.findall(r"state_dtype=(\w+)\s+([0-9.]+) MiB", outputs))
    assert float(sizes["int8"]) < float(sizes["bfloat16"]) < float(sizes["None"]), sizes
    assert "int8 state, 20 steps: train accuracy" in outputs
    # The full trainer ran in-process at the end.
    assert f"'steps': {MAX_STEPS}" in outputs
