"""The Colab notebook runs top to bottom on CPU with a small step budget."""

from __future__ import annotations

import os

import pytest

from examples.mnist.tests import helpers

NOTEBOOK = os.path.join(helpers.ROOT, "examples", "mnist", "mnist_colab.ipynb")


def test_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for key, value in helpers.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MNIST_MAX_STEPS", "24")
    monkeypatch.setenv("MNIST_DATA_DIR", helpers.SAMPLE)  # no traffic off the machine
    monkeypatch.chdir(helpers.ROOT)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": helpers.ROOT}}
    )
    client.execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "backend: cpu" in outputs
    assert "'steps': 24" in outputs
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2
