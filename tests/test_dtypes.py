"""Precision policy, dtype stability and the pytrees RMSProp must accept."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop


def _run(tx, params, grads, steps=3):
    state = tx.init(params)
    update = jax.jit(tx.update)
    shapes0 = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), state)
    for _ in range(steps):
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        assert jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), state) == shapes0
    return params, updates, state


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params_get_float32_state(dtype):
    params = {"w": jnp.ones((4,), dtype)}
    tx = optax_rmsprop.rmsprop(0.01, momentum=0.9, centered=True)
    params, updates, state = _run(tx, params, {"w": jnp.full((4,), 0.5, dtype)})
    assert updates["w"].dtype == dtype
    assert params["w"].dtype == dtype
    for tree in (state.rms.nu, state.rms.mu, state.momentum):
        assert tree["w"].dtype == jnp.float32


def test_float16_zero_gradient_is_finite():
    """optax issue 1784: eps underflows in float16 and 0 * inf gives NaN."""
    params = jnp.ones((3,), jnp.float16)
    _, updates, state = _run(optax_rmsprop.rmsprop(0.01), params, jnp.zeros((3,), jnp.float16))
    chex.assert_tree_all_finite((updates, state))
    np.testing.assert_array_equal(np.asarray(updates, np.float32), 0.0)


def test_bfloat16_accumulator_does_not_stall():
    """A bf16 EMA stalls at 0.5; our float32 default reaches 1 - 0.999**t."""
    tx = optax_rmsprop.scale_by_rms(decay=0.999)
    g = jnp.ones((2,), jnp.bfloat16)
    state = tx.init(g)
    update = jax.jit(tx.update)
    for _ in range(3000):
        _, state = update(g, state)
    np.testing.assert_allclose(state.nu, 1 - 0.999**3000, rtol=1e-4)


def test_explicit_bfloat16_state_is_honoured():
    params = {"w": jnp.ones((8,), jnp.float32)}
    tx = optax_rmsprop.rmsprop(0.01, momentum=0.9, centered=True, state_dtype=jnp.bfloat16)
    _, updates, state = _run(tx, params, {"w": jnp.full((8,), 0.5, jnp.float32)})
    assert updates["w"].dtype == jnp.float32
    for tree in (state.rms.nu, state.rms.mu, state.momentum):
        assert tree["w"].dtype == jnp.bfloat16
    assert state.rms.nu["w"].nbytes == params["w"].nbytes // 2


def test_float64_and_mixed_trees():
    params = {
        "f64": jnp.ones((3,), jnp.float64),
        "f32": jnp.ones((2,), jnp.float32),
        "bf16": jnp.ones((2,), jnp.bfloat16),
        "c64": jnp.ones((2,), jnp.complex64),
        "c128": jnp.ones((2,), jnp.complex128),
        "scalar": jnp.float32(2.0),
    }
    grads = jax.tree.map(lambda p: 0.5 * p, params)
    tx = optax_rmsprop.rmsprop(0.01, momentum=0.9, centered=True, weight_decay=1e-3)
    params2, updates, state = _run(tx, params, grads)
    for k, p in params.items():
        assert updates[k].dtype == p.dtype, k
        assert params2[k].dtype == p.dtype, k
    nu = state.rms.nu
    assert nu["f64"].dtype == jnp.float64
    assert nu["c64"].dtype == jnp.float32  # |g|^2 is real
    assert nu["c128"].dtype == jnp.float64
    assert state.rms.mu["c64"].dtype == jnp.complex64
    assert state.momentum["c128"].dtype == jnp.complex128
    chex.assert_tree_all_finite(state)


def test_empty_tree_none_leaves_and_masked_nodes():
    tx = optax_rmsprop.rmsprop(0.1, momentum=0.9, centered=True)
    assert tx.update({}, tx.init({}), {})[0] == {}
    params = {"a": jnp.ones(2), "none": None, "masked": optax.MaskedNode()}
    grads = {"a": jnp.ones(2), "none": None, "masked": optax.MaskedNode()}
    _, updates, _ = _run(tx, params, grads)
    assert updates["none"] is None
    assert isinstance(updates["masked"], optax.MaskedNode)


def test_integer_params_get_a_clear_error():
    with pytest.raises(ValueError, match=r"\['step'\] has dtype int32.*optax.masked"):
        optax_rmsprop.rmsprop(0.1).init({"step": jnp.zeros((), jnp.int32)})


def test_momentum_zero_is_no_momentum():
    params = jnp.arange(3.0)
    with_zero = optax_rmsprop.rmsprop(0.1, momentum=0.0)
    without = optax_rmsprop.rmsprop(0.1)
    s0, s1 = with_zero.init(params), without.init(params)
    assert s0.momentum is None
    assert jax.tree.structure(s0) == jax.tree.structure(s1)
    u0, _ = with_zero.update(params, s0, params)
    u1, _ = without.update(params, s1, params)
    chex.assert_trees_all_equal(u0, u1)
