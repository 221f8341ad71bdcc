"""The edges the pages document, each as the pages state it."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop


@pytest.mark.parametrize(
    "state_dtype,spread", [(None, 1), ("bfloat16", 1), ("int8", 256), ("int4", 128)]
)
def test_a_nan_gradient_spreads_to_its_block_from_the_next_step(state_dtype, spread):
    """docs/state_precision.md: one NaN gradient, then the whole block (int8 256, int4 128)."""
    params = jnp.ones((16, 512))
    nan_once = params.at[3, 300].set(jnp.nan)
    tx = optax_rmsprop.rmsprop(0.1, state_dtype=state_dtype)
    first, state = tx.update(nan_once, tx.init(params), params)
    second, _ = tx.update(jnp.ones_like(params), state, params)
    assert int(jnp.isnan(first).sum()) == 1
    bad = np.argwhere(np.isnan(np.asarray(second)))
    assert len(bad) == spread and set(bad[:, 0]) == {3}, bad
    assert bad[:, 1].min() <= 300 <= bad[:, 1].max()


def test_apply_if_finite_skips_the_step_and_keeps_the_state():
    """docs/state_precision.md: optax.apply_if_finite around an int8 state."""
    params = jnp.ones((16, 512))
    tx = optax.apply_if_finite(optax_rmsprop.rmsprop(0.1, state_dtype="int8"), 5)
    state = tx.init(params)
    skipped, state = tx.update(params.at[3, 300].set(jnp.inf), state, params)
    np.testing.assert_array_equal(skipped, 0.0)
    assert int(state.notfinite_count) == 1
    updates, _ = tx.update(jnp.ones_like(params), state, params)
    plain = optax_rmsprop.rmsprop(0.1, state_dtype="int8")
    expected, _ = plain.update(jnp.ones_like(params), plain.init(params), params)
    np.testing.assert_array_equal(updates, expected)


@pytest.mark.parametrize("eps_in_sqrt", [False, True])
def test_zero_eps_gives_nan_where_gradient_and_nu_are_zero(eps_in_sqrt):
    """docs/algorithm.md, Zero eps: 0/0 where g and nu are 0; initial_scale > 0 avoids it."""
    params = jnp.zeros(2)
    grads = jnp.asarray([1.0, 0.0])
    tx = optax_rmsprop.rmsprop(0.1, eps=0.0, eps_in_sqrt=eps_in_sqrt)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert bool(jnp.isfinite(updates[0])) and bool(jnp.isnan(updates[1]))
    safe = optax_rmsprop.rmsprop(0.1, eps=0.0, eps_in_sqrt=eps_in_sqrt, initial_scale=1.0)
    updates, _ = safe.update(grads, safe.init(params), params)
    assert bool(jnp.all(jnp.isfinite(updates)))


def test_dequantized_state_continues_in_float32_once_its_count_is_dropped():
    """docs/state_precision.md, back to float32 state: the tree of the float32 optimizer."""
    import jax

    params = {"w": jnp.linspace(0.5, 2.0, 8 * 512).reshape(8, 512)}
    tx8 = optax_rmsprop.rmsprop(1e-3, momentum=0.9, state_dtype="int8")
    tx32 = optax_rmsprop.rmsprop(1e-3, momentum=0.9)
    state = optax_rmsprop.dequantize_state(tx8.init(params), params)
    assert jax.tree.structure(state) != jax.tree.structure(tx32.init(params))
    state = state._replace(rms=state.rms._replace(count=None))
    assert jax.tree.structure(state) == jax.tree.structure(tx32.init(params))
    updates, _ = tx32.update(params, state, params)
    expected, _ = tx32.update(params, tx32.init(params), params)  # both start from zeros
    np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)
