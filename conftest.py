"""Repository-wide pytest setup: every test process sees 8 simulated CPU devices.

Set before JAX starts its backend, so the library's sharding tests and the
trainer's multi-device tests run on an 8-device mesh on any CPU.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

collect_ignore = [
    "examples/mnist/__main__.py",  # running it on import would train
    "tests/optax_suite",  # a plugin that swaps optax.rmsprop: only for its child pytest
]


def pytest_collection_modifyitems(items):
    """Slow tests first (stable order otherwise), so that no long test is left for the end
    while the other worker waits."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
