"""The optimizer state round-trips through flax.serialization and orbax."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import pytest

import optax_rmsprop
from tests.helpers import update_and_apply

# flax and orbax come with the examples extra (absent from the minimum-versions set).
serialization = pytest.importorskip("flax.serialization")


def _trained_state():
    tx = optax_rmsprop.rmsprop(0.1, momentum=0.9, centered=True, bias_correction=True)
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3, jnp.bfloat16)}
    state, step = tx.init(params), update_and_apply(tx)
    for _ in range(3):
        params, state = step(params, state, jax.tree.map(lambda p: p + 1, params))
    return tx, params, state


def test_flax_serialization_round_trip():
    tx, params, state = _trained_state()
    restored = serialization.from_bytes(tx.init(params), serialization.to_bytes(state))
    chex.assert_trees_all_equal(restored, state)
    chex.assert_trees_all_equal_dtypes(restored, state)
    assert isinstance(restored, optax_rmsprop.RMSPropState)


def test_orbax_round_trip(tmp_path):
    import orbax.checkpoint as ocp

    tx, params, state = _trained_state()
    path = tmp_path / "state"
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, state)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path, tx.init(params))
    chex.assert_trees_all_equal(restored, state)
    chex.assert_trees_all_equal_dtypes(restored, state)
    u1, _ = tx.update(params, state, params)
    u2, _ = tx.update(params, restored, params)
    chex.assert_trees_all_equal(u1, u2)
