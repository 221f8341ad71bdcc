"""Regenerate the golden trajectories from the real frameworks.

    python -m tests.golden.generate pytorch timm keras        # needs torch, timm, keras+jax
    python -m tests.golden.generate keras_legacy tensorflow_v1  # needs tensorflow, tf_keras

TensorFlow need not share a virtual environment with JAX: the runners import
only NumPy and the framework, e.g. ``.venv-tf/bin/python -m tests.golden.generate
keras_legacy tensorflow_v1`` after ``python3.11 -m venv .venv-tf &&
.venv-tf/bin/pip install tensorflow tf_keras``.

Writes ``tests/golden/<framework>.npz`` (every case, float32 and float64) and
``tests/golden/<framework>.json`` (the cases and the versions that made them).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys

import numpy as np

from tests.golden import frameworks

HERE = os.path.dirname(__file__)
PACKAGES = {
    "pytorch": ["torch"],
    "timm": ["torch", "timm"],
    "keras": ["keras", "jax"],
    "keras_legacy": ["tensorflow", "tf_keras"],
    "tensorflow_v1": ["tensorflow"],
}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def generate(name: str) -> None:
    arrays = {}
    for i, case in enumerate(frameworks.CASES[name]):
        for dtype in frameworks.DTYPES:
            for key, value in frameworks.RUNNERS[name](case, dtype).items():
                arrays[f"{i}/{dtype}/{key}"] = value
    np.savez_compressed(os.path.join(HERE, f"{name}.npz"), **arrays)
    meta = {
        "framework": name,
        "steps": frameworks.STEPS,
        "cases": frameworks.CASES[name],
        "versions": {p: _version(p) for p in PACKAGES[name]},
    }
    with open(os.path.join(HERE, f"{name}.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{name}: {len(frameworks.CASES[name])} cases x {len(frameworks.DTYPES)} dtypes")


if __name__ == "__main__":
    for framework in sys.argv[1:] or frameworks.RUNNERS:
        generate(framework)
