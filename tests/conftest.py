"""Library tests run with float64 enabled; float32 tests say so explicitly."""

import pytest

from optax_rmsprop import _jax_versions


@pytest.fixture(autouse=True)
def _float64():
    with _jax_versions.enable_x64(True):
        yield
