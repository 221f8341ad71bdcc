"""Test setup: 8 simulated CPU devices, and float64 enabled inside every test."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _float64():
    """The reference comparisons run in float64; float32 tests say so explicitly."""
    with jax.enable_x64(True):
        yield
