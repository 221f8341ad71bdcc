"""A pytest plugin that makes ``optax.rmsprop`` this library's ``rmsprop`` for a whole run.

Loaded with ``-p tests.optax_suite.swap_rmsprop`` before optax's own test
modules are imported, so every generic test that optax runs for its rmsprop
(``optax/_src/alias_test.py``, ``float64_test.py``, ``sharding_test.py``, as
shipped in optax's wheel) runs ours instead. ``tests/test_optax_suite.py``
drives it.
"""

import optax
from optax._src import alias

import optax_rmsprop

alias.rmsprop = optax_rmsprop.rmsprop
optax.rmsprop = optax_rmsprop.rmsprop


def pytest_collection_modifyitems(config, items):
    """Keeps the tests that optax runs for rmsprop: by test name, or by absl's parameters."""
    del config
    items[:] = [
        item
        for item in items
        if "rmsprop" in item.name.lower()
        or "'rmsprop'" in str(getattr(getattr(item, "obj", None), "__x_params_repr__", ""))
    ]
