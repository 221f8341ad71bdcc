"""effective_step_size finds the RMSProp state wherever it sits and is exact."""

from __future__ import annotations

import chex
import numpy as np
import optax
import pytest

import optax_rmsprop


def _after_one_step(tx, params, grads):
    state = tx.init(params)
    _, state = tx.update(grads, state, params)
    return state


PARAMS = {"w": np.array([1.0, 2.0]), "b": np.array(3.0)}
GRADS = {"w": np.array([0.5, -4.0]), "b": np.array(0.0)}


@pytest.mark.parametrize("eps_in_sqrt", [False, True])
@pytest.mark.parametrize("centered", [False, True])
def test_matches_hand_computation(eps_in_sqrt, centered):
    eps = 1e-3
    tx = optax_rmsprop.rmsprop(0.2, decay=0.8, eps=eps, eps_in_sqrt=eps_in_sqrt, centered=centered)
    sizes = optax_rmsprop.effective_step_size(_after_one_step(tx, PARAMS, GRADS), 0.2)
    for k, g in GRADS.items():
        g = np.asarray(g)
        var = 0.2 * g**2 - (0.2 * g) ** 2 * centered
        denom = np.sqrt(var + eps) if eps_in_sqrt else np.sqrt(var) + eps
        np.testing.assert_allclose(sizes[k], 0.2 / denom, rtol=1e-12)


def test_without_learning_rate_and_with_schedule():
    tx = optax_rmsprop.rmsprop(0.1, bias_correction=True)
    state = _after_one_step(tx, PARAMS, GRADS)
    inverse = optax_rmsprop.effective_step_size(state)
    np.testing.assert_allclose(inverse["w"], 1 / (np.abs(GRADS["w"]) + 1e-8), rtol=1e-12)
    scheduled = optax_rmsprop.effective_step_size(state, lambda count: 0.5 * (count + 1))
    chex.assert_trees_all_close(scheduled, {k: 0.5 * v for k, v in inverse.items()})


def test_found_inside_wrappers():
    base = optax_rmsprop.rmsprop(0.1)
    want = optax_rmsprop.effective_step_size(_after_one_step(base, PARAMS, GRADS), 0.1)
    for tx in (
        optax.chain(optax.clip_by_global_norm(10.0), optax_rmsprop.rmsprop(0.1)),
        optax.inject_hyperparams(optax_rmsprop.rmsprop, static_args=("weight_decay",))(0.1),
        optax.MultiSteps(optax_rmsprop.rmsprop(0.1), every_k_schedule=1),
    ):
        got = optax_rmsprop.effective_step_size(_after_one_step(tx, PARAMS, GRADS), 0.1)
        chex.assert_trees_all_close(got, want)
    masked = optax.masked(optax_rmsprop.rmsprop(0.1), {"w": True, "b": False})
    got = optax_rmsprop.effective_step_size(_after_one_step(masked, PARAMS, GRADS), 0.1)
    chex.assert_trees_all_close(got["w"], want["w"])
    assert isinstance(got["b"], optax.MaskedNode)


def test_no_or_several_states_is_an_error():
    with pytest.raises(ValueError, match="found 0"):
        optax_rmsprop.effective_step_size(optax.adam(0.1).init(PARAMS))
    two = optax.multi_transform(
        {"a": optax_rmsprop.rmsprop(0.1), "b": optax_rmsprop.rmsprop(0.2)},
        {"w": "a", "b": "b"},
    )
    with pytest.raises(ValueError, match="found 2"):
        optax_rmsprop.effective_step_size(two.init(PARAMS))
