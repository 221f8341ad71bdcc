"""Sharded params under jax.jit on 8 simulated CPU devices (see conftest.py)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optax_rmsprop
from tests.helpers import jitted_step

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")


def test_state_is_sharded_like_params_and_numbers_match():
    mesh = jax.make_mesh(
        (4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Explicit,) * 2
    )
    shardings = {
        "w": NamedSharding(mesh, P("data", "model")),
        "b": NamedSharding(mesh, P("model")),
        "s": NamedSharding(mesh, P()),
    }
    host = {
        "w": np.arange(64.0).reshape(8, 8) / 64,
        "b": np.linspace(-1, 1, 4),
        "s": np.asarray(0.5),
    }
    params = jax.tree.map(jax.device_put, host, shardings)
    tx = optax_rmsprop.rmsprop(0.1, momentum=0.9, centered=True, weight_decay=0.01)
    with jax.set_mesh(mesh):
        state = jax.jit(tx.init)(params)
    for tree in (state.rms.nu, state.rms.mu, state.momentum):
        for k in host:
            assert tree[k].sharding.is_equivalent_to(shardings[k], tree[k].ndim), k

    step = jitted_step(tx)

    def five_steps(params, state):
        for _ in range(5):
            params, state = step(params, state, jax.tree.map(lambda p: p - 0.3, params))
        return params, state

    with jax.set_mesh(mesh):
        params, state = five_steps(params, state)
    for k in host:
        assert params[k].sharding.is_equivalent_to(shardings[k], params[k].ndim)
        assert state.momentum[k].sharding.is_equivalent_to(shardings[k], params[k].ndim)

    single = jax.tree.map(jnp.asarray, host)
    single, _ = five_steps(single, tx.init(single))
    chex.assert_trees_all_close(jax.device_get(params), jax.device_get(single), rtol=1e-12)
