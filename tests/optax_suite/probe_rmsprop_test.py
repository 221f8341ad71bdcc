"""Run only by tests/test_optax_suite.py, under the swap plugin: optax.rmsprop is ours."""

import optax
from optax._src import alias

import optax_rmsprop


def test_rmsprop_is_ours():
    assert optax.rmsprop is optax_rmsprop.rmsprop
    assert alias.rmsprop is optax_rmsprop.rmsprop
