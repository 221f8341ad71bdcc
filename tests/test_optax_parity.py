"""Agreement with optax.rmsprop wherever the two define the same optimizer."""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop
from tests.helpers import jitted_step, option_params

# Left out: nesterov without momentum (an error), and centered + bias correction
# with eps outside the root, where var = g**2 - g**2 = 0 at t=0 and the step is
# rounding noise / eps in both libraries.
OPTIONS = [
    dict(eps_in_sqrt=e, centered=c, momentum=m, nesterov=n, bias_correction=b)
    for e, c, m, n, b in itertools.product(
        [False, True], [False, True], [None, 0.9], [False, True], [False, True]
    )
    if not (n and m is None) and not (c and b and not e)
]


def _trajectory(tx, params, steps=100):
    state = tx.init(params)
    rng = np.random.default_rng(0)
    step = jitted_step(tx)
    out = []
    for _ in range(steps):
        g = jax.tree.map(lambda p: p - 1.0 + 0.3 * rng.normal(size=p.shape), params)
        params, state = step(params, state, g)
        out.append(params)
    return out


@pytest.mark.parametrize(
    "options", option_params(OPTIONS, {"momentum", "nesterov"}, {"centered", "eps_in_sqrt"})
)
def test_matches_optax_rmsprop(options):
    kwargs = dict(decay=0.9, eps=1e-3, initial_scale=0.1, **options)
    params = {"w": jnp.linspace(-2.0, 2.0, 6, dtype=jnp.float64), "b": jnp.float64(0.5)}
    ours = _trajectory(optax_rmsprop.rmsprop(0.01, **kwargs), params)
    theirs = _trajectory(optax.rmsprop(0.01, **kwargs), params)
    for a, b in zip(ours, theirs, strict=False):
        chex.assert_trees_all_close(a, b, rtol=1e-12, atol=1e-14)


def test_default_eps_placement_differs_from_optax():
    """Our default is eps outside the root (Hinton's and PyTorch's formula); optax's is inside."""
    g = jnp.array([1e-3])
    ours, _ = optax_rmsprop.rmsprop(1.0, eps=1e-4).update(
        g, optax_rmsprop.rmsprop(1.0, eps=1e-4).init(g)
    )
    theirs, _ = optax.rmsprop(1.0, eps=1e-4).update(g, optax.rmsprop(1.0, eps=1e-4).init(g))
    expected = -g / (jnp.sqrt(0.1 * g**2) + 1e-4)
    chex.assert_trees_all_close(ours, expected, rtol=1e-12)
    assert not np.allclose(ours, theirs, rtol=1e-3)


def test_scale_by_rms_matches_optax():
    g = jnp.array([0.3, -2.0, 5.0], dtype=jnp.float64)
    for eps_in_sqrt in (False, True):
        ours = optax_rmsprop.scale_by_rms(0.8, 1e-3, eps_in_sqrt=eps_in_sqrt, initial_scale=0.2)
        theirs = optax.scale_by_rms(0.8, 1e-3, eps_in_sqrt=eps_in_sqrt, initial_scale=0.2)
        s1, s2 = ours.init(g), theirs.init(g)
        for _ in range(5):
            u1, s1 = ours.update(g, s1)
            u2, s2 = theirs.update(g, s2)
            chex.assert_trees_all_close(u1, u2, rtol=1e-13)


def test_bias_corrected_rmsprop_is_adam_without_first_moment():
    """The FAQ's claim: rmsprop(bias_correction=True) == optax.adam(b1=0)."""
    params = {"w": jnp.linspace(-2.0, 2.0, 6, dtype=jnp.float64)}
    ours = _trajectory(optax_rmsprop.rmsprop(0.01, decay=0.99, bias_correction=True), params)
    adam = _trajectory(optax.adam(0.01, b1=0.0, b2=0.99, eps=1e-8), params)
    for a, b in zip(ours, adam, strict=True):
        chex.assert_trees_all_close(a, b, rtol=1e-12, atol=1e-14)
