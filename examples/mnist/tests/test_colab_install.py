"""The notebook's install step leaves the runtime's jax, jaxlib, flax and optax as they are."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

from examples.mnist import colab_install
from examples.mnist.tests import helpers

VERSIONS = (
    "import json; from examples.mnist import colab_install as c; "
    "print(json.dumps(c.installed_versions()))"
)


def _versions() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", VERSIONS],
        capture_output=True,
        text=True,
        cwd=helpers.ROOT,
        check=True,
    )
    return json.loads(out.stdout)


def test_dry_run_pins_every_installed_runtime_package(capsys):
    assert colab_install.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in ("jax", "jaxlib", "flax", "optax"):
        assert f"{name} {importlib.metadata.version(name)}" in out
    assert "[examples]" in out and " -c " in out


@pytest.mark.slow
def test_install_keeps_jax_jaxlib_flax_and_optax():
    before = _versions()
    assert {"jax", "jaxlib", "flax", "optax"} <= set(before)
    run = subprocess.run(
        [sys.executable, "-m", "examples.mnist.colab_install"],
        capture_output=True,
        text=True,
        cwd=helpers.ROOT,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert _versions() == before
