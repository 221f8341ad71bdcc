"""Small helpers shared by the library's tests."""

from __future__ import annotations

import jax
import optax


def jitted_step(tx: optax.GradientTransformation):
    """``(params, state, grads) -> (params, state)``: one jitted update and apply."""

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step
