"""The trainer's XLA:CPU flag: added only when wanted, known to this jaxlib, and not chosen
already; decided without a child process and without writing a file."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from examples.mnist.robust import xla_cpu
from examples.mnist.tests import helpers

CONV_HLO = """
import jax, jax.numpy as jnp
conv = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
x, w = jnp.ones((128, 14, 14, 32)), jnp.ones((3, 3, 32, 64))  # the CNN's conv2
hlo = jax.jit(jax.grad(lambda w: conv(x, w).sum())).lower(w).compile().as_text()
print(sum('ynn_fusion' in l and 'conv_general_dilated' in l for l in hlo.splitlines()))
"""


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")


def _known() -> bool:
    return xla_cpu.jaxlib_version() >= xla_cpu.FIRST_JAXLIB


def test_no_child_process_and_no_file_written(tmp_path, monkeypatch):
    for name in ("run", "Popen"):
        monkeypatch.setattr(subprocess, name, lambda *a, **k: pytest.fail("a child process"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    monkeypatch.chdir(tmp_path)
    added = xla_cpu.configure()
    assert os.listdir(tmp_path) == []
    expected = xla_cpu.CPU_TUNING if _known() else None
    assert added == expected
    assert os.environ["XLA_FLAGS"] == " ".join(
        f for f in ("--xla_force_host_platform_device_count=2", expected) if f
    )


def test_an_older_jaxlib_gets_no_flag(monkeypatch):
    monkeypatch.setattr(xla_cpu, "jaxlib_version", lambda: (0, 7))
    monkeypatch.setenv("XLA_FLAGS", "")
    assert xla_cpu.configure() is None
    assert os.environ["XLA_FLAGS"] == ""


def test_no_flag_when_jax_runs_on_an_accelerator(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert xla_cpu.configure() is None
    assert os.environ["XLA_FLAGS"] == ""


def test_disabled_or_user_choice_leaves_xla_flags_alone(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert xla_cpu.configure(enable=False) is None
    mine = f"--{xla_cpu.FLAG_NAME}=dot"
    monkeypatch.setenv("XLA_FLAGS", mine)
    assert xla_cpu.configure() is None
    assert os.environ["XLA_FLAGS"] == mine


def _conv_in_child(xla_flags: str) -> subprocess.CompletedProcess:
    env = {**helpers.env(1), "XLA_FLAGS": xla_flags}
    return subprocess.run([sys.executable, "-c", CONV_HLO], env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_the_version_gate_matches_what_this_jaxlib_accepts():
    # An unknown flag aborts jaxlib at start-up: the gate must add it only where it is known.
    run = _conv_in_child(xla_cpu.CPU_TUNING)
    assert (run.returncode == 0) == _known(), run.stderr[-2000:]


@pytest.mark.slow
def test_with_the_flag_no_convolution_goes_to_ynnpack():
    if not _known():
        pytest.skip("this jaxlib does not know the flag")
    default = _conv_in_child("")
    assert default.returncode == 0, default.stderr
    if int(default.stdout) == 0:
        pytest.skip("this jaxlib does not send convolutions to YNNPACK anyway")
    assert int(_conv_in_child(xla_cpu.CPU_TUNING).stdout) == 0
