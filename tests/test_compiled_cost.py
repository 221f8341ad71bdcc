"""The compiled step does no more memory work than optax.rmsprop's.

Timing ratios on a shared machine are noisy (see docs/benchmarks.md); this is
the deterministic half of the "never slower than optax" claim. For every option
set both libraries define, XLA's own cost analysis of the optimised, jitted,
donated step (update + apply) must show no more bytes accessed and no more
kernels than optax's, and the same number of entry parameters.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import optax
import pytest

import optax_rmsprop
from tests import helpers as common  # the compiled step and XLA's figures for it
from tests.helpers import option_params

PARAMS = {
    "w": jnp.ones((64, 32), jnp.float32),
    "b": jnp.ones((32,), jnp.float32),
    "s": jnp.ones((), jnp.float32),
}
OPTIONS = [
    dict(centered=c, momentum=m, nesterov=n, eps_in_sqrt=e)
    for c, m, n, e in itertools.product([False, True], [None, 0.9], [False, True], [False, True])
    if not (n and m is None)
]


def _cost(tx) -> dict:
    compiled = common.compile_step(tx, PARAMS)
    ops = common.entry_ops(compiled)
    return {
        "bytes": common.bytes_accessed(compiled),
        # Kernels: fused or not (older XLA leaves a lone `add` unfused where newer
        # XLA fuses a `negate_add`: one kernel either way).
        "kernels": common.kernels(ops),
        "parameters": ops.count("parameter"),
    }


@pytest.mark.xla_contract
@pytest.mark.parametrize("options", option_params(OPTIONS, {"momentum", "nesterov"}))
def test_no_more_memory_traffic_than_optax(options):
    ours = _cost(optax_rmsprop.rmsprop(1e-3, **options))
    theirs = _cost(optax.rmsprop(1e-3, **options))
    assert ours["parameters"] == theirs["parameters"], (ours, theirs)
    assert ours["kernels"] <= theirs["kernels"], (ours, theirs)
    assert ours["bytes"] <= theirs["bytes"], (ours, theirs)


def test_the_check_can_fail():
    # A step that keeps an extra float32 buffer per parameter (the first
    # version's count-per-leaf mistake, exaggerated) must be caught.
    heavier = optax.chain(optax_rmsprop.scale_by_rms(), optax.trace(0.0), optax.scale(-1e-3))
    assert _cost(heavier)["bytes"] > _cost(optax.rmsprop(1e-3))["bytes"]
