"""rmsprop composed with the rest of Optax, Flax and JAX's transformations."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop
from tests.helpers import jitted_step
from tests.reference import Config, RMSPropReference


def _params():
    return {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5, jnp.float64)}


def _grads(params, scale=1.0):
    return jax.tree.map(lambda p: scale * (p - 0.25), params)


def _reference_step(cfg, params, grads_list):
    refs = {k: RMSPropReference(cfg, np.asarray(v)) for k, v in params.items()}
    for grads in grads_list:
        for k in refs:
            refs[k].step(np.asarray(grads[k]))
    return {k: r.params for k, r in refs.items()}


def test_chain_with_clip_by_global_norm():
    params = _params()
    grads = _grads(params, scale=100.0)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax_rmsprop.rmsprop(0.1))
    updates, _ = tx.update(grads, tx.init(params), params)
    clipped, _ = optax.clip_by_global_norm(1.0).update(grads, None)
    want = _reference_step(Config(learning_rate=0.1), params, [clipped])
    chex.assert_trees_all_close(optax.apply_updates(params, updates), want, rtol=1e-12)


def test_schedule_is_called_with_the_step_count():
    calls = []

    def sched(count):
        calls.append(count)
        return 0.1 / (1.0 + count)

    tx = optax_rmsprop.rmsprop(sched)
    params = _params()
    state = tx.init(params)
    for _ in range(3):
        _, state = tx.update(_grads(params), state, params)
    assert [int(c) for c in calls] == [0, 1, 2]


def test_inject_hyperparams_changes_values_without_recompiling():
    tx = optax.inject_hyperparams(optax_rmsprop.rmsprop)(
        learning_rate=0.1, decay=0.9, eps=1e-8, momentum=0.9
    )
    params = _params()
    state = tx.init(params)
    step = jitted_step(tx)

    hp_runs = [
        dict(learning_rate=0.1, decay=0.9, eps=1e-8, momentum=0.9),
        dict(learning_rate=0.02, decay=0.5, eps=1e-3, momentum=0.3),
    ]
    for hp in hp_runs:
        for k, v in hp.items():
            state.hyperparams[k] = jnp.asarray(v, state.hyperparams[k].dtype)
        state_before, params_before = state, params
        params, state = step(params, state, _grads(params))
        direct = optax_rmsprop.rmsprop(**hp)
        inner = state_before.inner_state
        want_updates, _ = direct.update(_grads(params_before), inner, params_before)
        chex.assert_trees_all_close(
            params, optax.apply_updates(params_before, want_updates), rtol=1e-12
        )
    assert step._cache_size() == 1  # one trace and compile for both sets of values


def test_inject_hyperparams_weight_decay_without_params_explains_itself():
    tx = optax.inject_hyperparams(optax_rmsprop.rmsprop)(learning_rate=0.1)
    params = _params()
    with pytest.raises(ValueError, match="static_args=\\('weight_decay',\\)"):
        tx.update(_grads(params), tx.init(params))
    tx = optax.inject_hyperparams(optax_rmsprop.rmsprop, static_args=("weight_decay",))(0.1)
    updates, _ = tx.update(_grads(params), tx.init(params))
    plain = optax_rmsprop.rmsprop(0.1)
    want, _ = plain.update(_grads(params), plain.init(params))
    chex.assert_trees_all_close(updates, want, rtol=1e-6)


def test_multisteps_accumulates_then_updates_once():
    params = _params()
    tx = optax.MultiSteps(optax_rmsprop.rmsprop(0.1), every_k_schedule=3)
    state = tx.init(params)
    grads_list = [_grads(params, s) for s in (1.0, 2.0, 3.0)]
    for i, g in enumerate(grads_list):
        updates, state = tx.update(g, state, params)
        if i < 2:
            chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
    mean = jax.tree.map(lambda *g: sum(g) / 3, *grads_list)
    want = _reference_step(Config(learning_rate=0.1), params, [mean])
    chex.assert_trees_all_close(optax.apply_updates(params, updates), want, rtol=1e-12)


def test_masked_and_multi_transform():
    params = _params()
    grads = _grads(params)
    tx = optax.masked(optax_rmsprop.rmsprop(0.1), {"w": True, "b": False})
    updates, state = tx.update(grads, tx.init(params), params)
    chex.assert_trees_all_equal(updates["b"], grads["b"])  # masked leaves pass through
    want = _reference_step(Config(learning_rate=0.1), params, [grads])
    chex.assert_trees_all_close(params["w"] + updates["w"], want["w"], rtol=1e-12)
    assert isinstance(state.inner_state.rms.nu["b"], optax.MaskedNode)

    tx = optax.multi_transform(
        {"rms": optax_rmsprop.rmsprop(0.1), "sgd": optax.sgd(0.5)},
        {"w": "rms", "b": "sgd"},
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    chex.assert_trees_all_close(updates["b"], -0.5 * grads["b"])
    chex.assert_trees_all_close(params["w"] + updates["w"], want["w"], rtol=1e-12)


def test_apply_if_finite_skips_nan_steps():
    params = _params()
    tx = optax.apply_if_finite(optax_rmsprop.rmsprop(0.1), max_consecutive_errors=5)
    state = tx.init(params)
    bad = jax.tree.map(lambda p: p * jnp.nan, params)
    updates, state = tx.update(bad, state, params)
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
    chex.assert_tree_all_finite(state.inner_state)
    updates, state = tx.update(_grads(params), state, params)
    want = _reference_step(Config(learning_rate=0.1), params, [_grads(params)])
    chex.assert_trees_all_close(optax.apply_updates(params, updates), want, rtol=1e-12)


def test_extra_args_pass_through_a_chain():
    def needs_value(updates, state, params=None, *, value):
        return jax.tree.map(lambda u: u * value, updates), state

    scale_by_value = optax.GradientTransformationExtraArgs(
        lambda p: optax.EmptyState(), needs_value
    )
    tx = optax.chain(optax_rmsprop.rmsprop(0.1), scale_by_value)
    params = _params()
    updates, _ = tx.update(_grads(params), tx.init(params), params, value=2.0)
    plain, _ = optax_rmsprop.rmsprop(0.1).update(
        _grads(params), optax_rmsprop.rmsprop(0.1).init(params), params, value=5.0
    )
    chex.assert_trees_all_close(updates, jax.tree.map(lambda u: 2 * u, plain))


def test_vmap_over_independent_states():
    tx = optax_rmsprop.rmsprop(0.1, momentum=0.9)
    params = jnp.stack([jnp.arange(3.0) * k for k in range(1, 5)])
    states = jax.vmap(tx.init)(params)
    grads = params - 1.0
    updates, _ = jax.vmap(tx.update)(grads, states, params)
    for i in range(4):
        u_i, _ = tx.update(grads[i], tx.init(params[i]), params[i])
        chex.assert_trees_all_close(updates[i], u_i, rtol=1e-12)


@pytest.mark.parametrize("state_dtype", [None, "int8", "int4"])
def test_flax_nnx_optimizer(state_dtype):
    nnx = pytest.importorskip("flax.nnx")

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    # min_quantized_size=1: even these small leaves are quantized
    quantized = {} if state_dtype is None else {"min_quantized_size": 1}
    tx = optax_rmsprop.rmsprop(0.05, momentum=0.9, state_dtype=state_dtype, **quantized)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jnp.ones((4, 3))

    def loss_fn(m):
        return jnp.mean((m(x) - 1.0) ** 2)

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer)) for _ in range(60)]
    assert losses[-1] < 0.01 * losses[0]
    params = nnx.state(model, nnx.Param)  # 4-bit codes need the params' shapes to be read
    sizes = optax_rmsprop.effective_step_size(optimizer.opt_state, 0.05, eps=1e-8, params=params)
    param_shapes = [p.shape for p in jax.tree.leaves(params)]
    assert [s.shape for s in jax.tree.leaves(sizes)] == param_shapes
    chex.assert_tree_all_finite(jax.tree.leaves(sizes))
