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
    state = _after_one_step(tx, PARAMS, GRADS)
    sizes = optax_rmsprop.effective_step_size(state, 0.2, eps=eps, eps_in_sqrt=eps_in_sqrt)
    for k, g in GRADS.items():
        g = np.asarray(g)
        var = 0.2 * g**2 - (0.2 * g) ** 2 * centered
        denom = np.sqrt(var + eps) if eps_in_sqrt else np.sqrt(var) + eps
        np.testing.assert_allclose(sizes[k], 0.2 / denom, rtol=1e-12)


def test_without_learning_rate_and_with_schedule():
    tx = optax_rmsprop.rmsprop(0.1, decay=0.9, eps=1e-8, bias_correction=True)
    state = _after_one_step(tx, PARAMS, GRADS)
    kwargs = dict(eps=1e-8, decay=0.9, bias_correction=True)
    inverse = optax_rmsprop.effective_step_size(state, **kwargs)
    np.testing.assert_allclose(inverse["w"], 1 / (np.abs(GRADS["w"]) + 1e-8), rtol=1e-12)
    # without the flag, the same state reads as uncorrected: nu = 0.1 g**2
    uncorrected = optax_rmsprop.effective_step_size(state, eps=1e-8)
    np.testing.assert_allclose(
        uncorrected["w"], 1 / (np.sqrt(0.1) * np.abs(GRADS["w"]) + 1e-8), rtol=1e-12
    )
    scheduled = optax_rmsprop.effective_step_size(state, lambda count: 0.5 * (count + 1), **kwargs)
    chex.assert_trees_all_close(scheduled, {k: 0.5 * v for k, v in inverse.items()})


def test_found_inside_wrappers():
    base = optax_rmsprop.rmsprop(0.1)
    want = optax_rmsprop.effective_step_size(_after_one_step(base, PARAMS, GRADS), 0.1, eps=1e-8)
    for tx in (
        optax.chain(optax.clip_by_global_norm(10.0), optax_rmsprop.rmsprop(0.1)),
        optax.MultiSteps(optax_rmsprop.rmsprop(0.1), every_k_schedule=1),
    ):
        got = optax_rmsprop.effective_step_size(_after_one_step(tx, PARAMS, GRADS), 0.1, eps=1e-8)
        chex.assert_trees_all_close(got, want)
    masked = optax.masked(optax_rmsprop.rmsprop(0.1), {"w": True, "b": False})
    got = optax_rmsprop.effective_step_size(_after_one_step(masked, PARAMS, GRADS), 0.1, eps=1e-8)
    chex.assert_trees_all_close(got["w"], want["w"])
    assert isinstance(got["b"], optax.MaskedNode)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_injected_hyperparameters_are_read_from_the_state(bias_correction):
    # eps and decay are not in the RMSProp state (its structure must not depend
    # on them); under inject_hyperparams they are read from the wrapper's state.
    kwargs = dict(decay=0.8, eps=1e-3, bias_correction=bias_correction)
    plain = _after_one_step(optax_rmsprop.rmsprop(0.1, **kwargs), PARAMS, GRADS)
    flags = dict(bias_correction=bias_correction)
    want = optax_rmsprop.effective_step_size(plain, 0.1, eps=1e-3, decay=0.8, **flags)
    injected_tx = optax.inject_hyperparams(optax_rmsprop.rmsprop, static_args=("weight_decay",))
    injected = _after_one_step(injected_tx(0.1, **kwargs), PARAMS, GRADS)
    chex.assert_trees_all_close(optax_rmsprop.effective_step_size(injected, 0.1, **flags), want)
    # An explicit value wins over the injected one.
    other = optax_rmsprop.effective_step_size(injected, 0.1, eps=1.0, decay=0.8, **flags)
    assert np.all(np.asarray(other["w"]) < np.asarray(want["w"]))


def test_missing_eps_or_decay_is_an_error_naming_it():
    plain = _after_one_step(optax_rmsprop.rmsprop(0.1, bias_correction=True), PARAMS, GRADS)
    with pytest.raises(ValueError, match="pass eps="):
        optax_rmsprop.effective_step_size(plain, 0.1)
    with pytest.raises(ValueError, match="pass decay="):
        optax_rmsprop.effective_step_size(plain, 0.1, eps=1e-8, bias_correction=True)
    with pytest.raises(ValueError, match=r"eps must be a finite number in \[0, inf\)"):
        optax_rmsprop.effective_step_size(plain, 0.1, eps=-1.0, decay=0.9)


def test_no_or_several_states_is_an_error():
    with pytest.raises(ValueError, match="found 0"):
        optax_rmsprop.effective_step_size(optax.adam(0.1).init(PARAMS))
    two = optax.multi_transform(
        {"a": optax_rmsprop.rmsprop(0.1), "b": optax_rmsprop.rmsprop(0.2)},
        {"w": "a", "b": "b"},
    )
    with pytest.raises(ValueError, match="found 2"):
        optax_rmsprop.effective_step_size(two.init(PARAMS))
