"""``rmsprop(caution=True)``: the cautious variant, against NumPy and timm's port."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_rmsprop
from optax_rmsprop import compat
from tests.helpers import jitted_step

SHAPE = (4, 33)


def _grads(t):
    return jax.random.normal(jax.random.key(t), SHAPE, jnp.float64)


def test_one_step_masks_and_rescales_the_momentum_step():
    # NumPy, from the equations: b = mu * b + lr * g / (sqrt(nu) + eps); the step
    # keeps the components where b * g > 0, divided by their fraction.
    lr, decay, mu = 0.1, 0.9, 0.9
    p0 = np.linspace(-1.0, 1.0, np.prod(SHAPE)).reshape(SHAPE)
    tx = optax_rmsprop.rmsprop(lr, decay, 1e-8, momentum=mu, caution=True)
    state = tx.init(jnp.asarray(p0))
    g1, g2 = np.asarray(_grads(1)), np.asarray(_grads(2))
    _, state = tx.update(jnp.asarray(g1), state)
    updates, _ = tx.update(jnp.asarray(g2), state)
    nu = (1 - decay) * g1**2
    b = lr * g1 / (np.sqrt(nu) + 1e-8)
    nu = decay * nu + (1 - decay) * g2**2
    b = mu * b + lr * g2 / (np.sqrt(nu) + 1e-8)
    mask = (b * g2 > 0).astype(float)
    assert 0 < mask.mean() < 1  # the case masks something
    np.testing.assert_allclose(updates, -b * mask / mask.mean(), rtol=1e-12)


def test_matches_timms_cautious_rmsproptf():
    # compat.timm(caution=True) is checked against timm's own code (golden files);
    # rmsprop with timm's conventions must take the same steps.
    kwargs = dict(momentum=0.9, lr_in_momentum=True, caution=True)
    ours = optax_rmsprop.rmsprop(
        0.01, 0.9, 1e-10, initial_scale=1.0, eps_in_sqrt=True, centered=True, **kwargs
    )
    theirs = compat.timm(lr=0.01, alpha=0.9, eps=1e-10, centered=True, **kwargs)
    runs = []
    for tx in (ours, theirs):
        params, state, step = jnp.ones(SHAPE, jnp.float64), None, jitted_step(tx)
        state = tx.init(params)
        for t in range(10):
            params, state = step(params, state, _grads(t))
        runs.append(params)
    chex.assert_trees_all_close(*runs, rtol=1e-12, atol=1e-14)


def test_int8_state_and_complex_params():
    params = jnp.ones((8, 1024), jnp.complex64)
    grads = (1 + 2j) * jax.random.normal(jax.random.key(0), (8, 1024), jnp.float32)
    runs = {}
    for state_dtype in ("int8", None):
        tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, caution=True, state_dtype=state_dtype)
        p, state, step = params, tx.init(params), jitted_step(tx)
        for t in range(3):
            p, state = step(p, state, grads * (-1) ** t)
        runs[state_dtype] = p
    assert bool(jnp.all(jnp.isfinite(runs["int8"])))
    moved = float(jnp.mean(jnp.abs(runs[None] - params)))
    assert float(jnp.mean(jnp.abs(runs["int8"] - runs[None]))) < 0.03 * moved


@pytest.mark.parametrize("momentum", [None, 0.0])
def test_caution_without_momentum_is_refused(momentum):
    with pytest.raises(ValueError, match="caution=True needs momentum"):
        optax_rmsprop.rmsprop(1e-2, momentum=momentum, caution=True)
