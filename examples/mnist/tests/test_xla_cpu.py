"""The trainer's XLA:CPU flag: added only when wanted, safe, and not already chosen."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from examples.mnist import xla_cpu
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
def _private_cache(tmp_path, monkeypatch):
    """Each test probes with its own cache file, never the user's."""
    monkeypatch.setattr(xla_cpu, "CACHE_FILE", str(tmp_path / "xla_cpu_flags.json"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")


def test_the_probe_runs_once_per_jaxlib_version(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    first = xla_cpu.configure()
    monkeypatch.setenv("XLA_FLAGS", "")

    def no_child_process(*args, **kwargs):
        raise AssertionError("probed again")

    monkeypatch.setattr(subprocess, "run", no_child_process)
    assert xla_cpu.configure() == first  # answered from the cache


def test_no_probe_and_no_flag_when_jax_runs_on_an_accelerator(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("probed"))
    assert xla_cpu.configure() is None
    assert os.environ["XLA_FLAGS"] == ""


def test_disabled_or_user_choice_leaves_xla_flags_alone(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert xla_cpu.configure(enable=False) is None
    mine = f"--{xla_cpu.FLAG_NAME}=dot"
    monkeypatch.setenv("XLA_FLAGS", mine)
    assert xla_cpu.configure() is None
    assert os.environ["XLA_FLAGS"] == mine


def test_a_flag_jaxlib_rejects_is_never_added(monkeypatch):
    # An unknown flag aborts jaxlib at start-up; the probe must catch that.
    monkeypatch.setattr(xla_cpu, "CPU_TUNING", "--xla_cpu_no_such_flag_for_the_test=1")
    monkeypatch.setattr(xla_cpu, "FLAG_NAME", "xla_cpu_no_such_flag_for_the_test")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert xla_cpu.configure() is None
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"


def test_accepted_flag_is_appended(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    added = xla_cpu.configure()
    if added is None:
        pytest.skip("this jaxlib does not know the flag; the trainer runs with XLA's defaults")
    assert added == xla_cpu.CPU_TUNING
    assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {added}"


def _ynnpack_convolutions(xla_flags: str) -> int:
    env = {**helpers.env(1), "XLA_FLAGS": xla_flags}
    run = subprocess.run([sys.executable, "-c", CONV_HLO], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return int(run.stdout)


def test_with_the_flag_no_convolution_goes_to_ynnpack():
    if not xla_cpu._accepted(xla_cpu.CPU_TUNING):
        pytest.skip("this jaxlib does not know the flag")
    if _ynnpack_convolutions("") == 0:
        pytest.skip("this jaxlib does not send convolutions to YNNPACK anyway")
    assert _ynnpack_convolutions(xla_cpu.CPU_TUNING) == 0
