"""Library tests run with float64 enabled; float32 tests say so explicitly."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield
