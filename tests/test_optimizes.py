"""RMSProp minimises the parabola and the Rosenbrock function, real and complex."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_rmsprop
from tests.helpers import update_and_apply


def parabola(x):
    return jnp.sum(jnp.abs(x - 1.0) ** 2)


def rosenbrock(x):
    a, b = 1.0, 100.0
    return jnp.sum(jnp.abs(a - x[0]) ** 2 + b * jnp.abs(x[1] - x[0] ** 2) ** 2)


def _minimise(fn, x0, tx, steps):
    update = update_and_apply(tx)

    @jax.jit
    def step(x, state):
        # For complex x, jax.grad gives the conjugate of the ascent direction.
        return update(x, state, jnp.conj(jax.grad(fn)(x)))

    state = tx.init(x0)
    x = x0
    for _ in range(steps):
        x, state = step(x, state)
    return x


OPTIMIZERS = {
    "plain": lambda: optax_rmsprop.rmsprop(5e-3),
    "momentum": lambda: optax_rmsprop.rmsprop(5e-3, momentum=0.9),
    "centered_nesterov": lambda: optax_rmsprop.rmsprop(
        5e-3, centered=True, momentum=0.9, nesterov=True
    ),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_parabola(name, dtype):
    x = _minimise(parabola, jnp.array([-1.0, 2.5, 0.3], dtype), OPTIMIZERS[name](), 2000)
    assert x.dtype == dtype
    np.testing.assert_allclose(np.asarray(x), 1.0, atol=1e-2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_rosenbrock(name, dtype):
    x = _minimise(rosenbrock, jnp.array([-1.2, 1.0], dtype), OPTIMIZERS[name](), 10000)
    assert x.dtype == dtype
    np.testing.assert_allclose(np.asarray(x), 1.0, atol=5e-2)
