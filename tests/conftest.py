"""Library tests run with float64 enabled; float32 tests say so explicitly."""

import pytest

from tests import jax_compat


@pytest.fixture(autouse=True)
def _float64():
    with jax_compat.enable_x64(True):
        yield
