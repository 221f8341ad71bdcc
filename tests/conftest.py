"""Library tests run with float64 enabled; float32 tests say so explicitly."""

import pytest

from optax_rmsprop import _compat


@pytest.fixture(autouse=True)
def _float64():
    with _compat.enable_x64(True):
        yield
