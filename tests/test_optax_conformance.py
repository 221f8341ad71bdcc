"""The contracts optax holds its own optimizers to, checked for every option set of ours.

optax's suite runs its generic tests on two rmsprop configurations
(``tests/test_optax_suite.py`` runs those with ours swapped in). These are
written here for every option set and every ``compat`` port: under
``optax.inject_hyperparams`` the state equals the plain one, structure
included; a second ``update`` does not recompile; ``map_params`` reaches the
per-parameter buffers; the state keeps its types (and, with explicit
sharding, its shardings) across an update; and hyperparameter gradients
through 20 steps match finite differences.
"""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop
from optax_rmsprop import compat
from tests import jax_compat
from tests.helpers import jitted_step, option_params, update_and_apply

OPTION_SETS = [
    dict(centered=c, momentum=m, nesterov=n, bias_correction=b, eps_in_sqrt=e, weight_decay=w)
    for c, m, n, b, e, w in itertools.product(
        [False, True], [None, 0.9], [False, True], [False, True], [False, True], [0.0, 1e-2]
    )
    if not (n and m is None)
]


PORTS = {
    "pytorch": lambda: compat.pytorch(lr=1e-2, momentum=0.9, centered=True, weight_decay=1e-3),
    "keras": lambda: compat.keras(learning_rate=1e-2, momentum=0.9, centered=True),
    "keras_legacy": lambda: compat.keras_legacy(learning_rate=1e-2, momentum=0.9, decay=1e-3),
    "tensorflow_v1": lambda: compat.tensorflow_v1(1e-2, momentum=0.9, centered=True),
    "timm": lambda: compat.timm(lr=1e-2, momentum=0.9, weight_decay=1e-3),
}
PARAMS = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
GRADS = [jnp.ones((2, 3)), -jnp.full((2, 5, 2), 0.5)]


@pytest.mark.parametrize(
    "options", option_params(OPTION_SETS, {"momentum", "nesterov"}, {"centered", "bias_correction"})
)
def test_inject_hyperparams_state_equals_plain_state(options):
    # decay 0.75: 1 - decay is exact in float32 too, so the injected float32
    # decay rounds nothing the Python float does not. (With a centered,
    # bias-corrected first step the variance is exactly 0 in theory and
    # rounding noise over eps in practice, so any rounding difference shows.)
    plain = optax_rmsprop.rmsprop(5e-3, decay=0.75, **options)
    injected = optax.inject_hyperparams(optax_rmsprop.rmsprop)(5e-3, decay=0.75, **options)
    grads = [
        jax.tree.map(lambda g, s=s: s * g * jnp.arange(1.0, 1 + g.size).reshape(g.shape), GRADS)
        for s in (1.0, -0.5, 2.0)
    ]
    state, state_inj = jax.jit(plain.init)(PARAMS), jax.jit(injected.init)(PARAMS)
    for g in grads:
        updates, state = jax.jit(plain.update)(g, state, PARAMS)
        updates_inj, state_inj = jax.jit(injected.update)(g, state_inj, PARAMS)
    chex.assert_trees_all_equal_structs(state_inj.inner_state, state)
    chex.assert_trees_all_close(state_inj.inner_state, state, rtol=1e-6)
    chex.assert_trees_all_close(updates_inj, updates, rtol=1e-6)


@pytest.mark.parametrize(
    "options", option_params(OPTION_SETS, {"momentum", "nesterov"}, {"centered", "bias_correction"})
)
def test_second_update_does_not_recompile(options):
    _assert_compiles_once(optax_rmsprop.rmsprop(optax.cosine_decay_schedule(5e-3, 10), **options))


@pytest.mark.parametrize("name", PORTS)
def test_compat_port_second_update_does_not_recompile(name):
    _assert_compiles_once(PORTS[name]())


def _assert_compiles_once(tx):
    step = jitted_step(tx)
    params, state = step(PARAMS, tx.init(PARAMS), GRADS)
    params, state = step(params, state, GRADS)
    params, state = step(params, state, GRADS)
    assert step._cache_size() == 1  # one trace and compile for three calls


@pytest.mark.parametrize("options", [{}, dict(momentum=0.9, centered=True)], ids=str)
def test_map_params_reaches_every_per_parameter_buffer(options):
    tx = optax_rmsprop.rmsprop(optax.constant_schedule(1e-2), **options)
    state = tx.update(GRADS, tx.init(PARAMS), PARAMS)[1]
    zeroed = jax_compat.map_params(tx, jnp.zeros_like, state)
    per_param = [x for x in jax.tree.leaves(zeroed) if x.ndim]
    assert len(per_param) == len(PARAMS) * (1 + 2 * bool(options))
    assert all(not jnp.any(x) for x in per_param)
    assert zeroed.rms.count == state.rms.count == 1  # the step count is not a parameter


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64", "complex64"])
def test_state_types_are_stable_across_updates(dtype):
    # A lax.cond between the initial and the updated state only compiles when
    # both have the same dtypes, shapes and weak types.
    tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, centered=True)
    params = jnp.asarray([1.0, -2.0], dtype)
    state = tx.init(params)
    new_state = tx.update(params, state, params)[1]
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
    pick = jax.jit(lambda c, a, b: jax.lax.cond(c, lambda: a, lambda: b))
    pick(True, state, new_state)
    updates = tx.update(params, state, params)[0]
    assert updates.dtype == params.dtype


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")
def test_state_sharding_in_types_is_the_same_after_init_and_update():
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "x"))
    tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, centered=True)
    with jax.set_mesh(mesh):
        params = jax.device_put(jnp.ones((2, 8, 4), jnp.float32), sharding)
        state = jax.jit(tx.init)(params)
        new_state = jax.jit(tx.update)(params, state, params)[1]
    types = lambda tree: [jax.typeof(x).sharding.spec for x in jax.tree.leaves(tree)]
    assert types(new_state) == types(state)
    assert types(state.rms.nu) == types(params)


# -- hyperparameter gradients (meta-learning) ---------------------------------
META_VARIANTS = {
    "plain": ({}, ("learning_rate", "decay", "eps")),
    "centered": ({"centered": True}, ("learning_rate", "decay", "eps")),
    "momentum": ({"momentum": 0.9}, ("learning_rate", "decay", "eps", "momentum")),
}
HYPERPARAMS = {"learning_rate": 0.05, "decay": 0.9, "eps": 1e-3, "momentum": 0.9}


def _loss_after_20_steps(name, value, options):
    """Loss of a least-squares problem after 20 steps, as a function of one hyperparameter."""
    x = jnp.linspace(-1.0, 1.0, 24).reshape(8, 3)
    y = jnp.sin(jnp.arange(8.0))
    loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)
    kwargs = {k: HYPERPARAMS[k] for k in ("learning_rate", "decay", "eps")} | options
    tx = optax.inject_hyperparams(optax_rmsprop.rmsprop)(**kwargs)
    params = {"w": jnp.asarray([0.3, -0.2, 0.1]), "b": jnp.asarray(0.05)}
    state = tx.init(params)
    state.hyperparams[name] = value

    step = update_and_apply(tx)

    def scan_step(carry, _):
        params, state = carry
        return step(params, state, jax.grad(loss)(params)), None

    (params, _), _ = jax.lax.scan(scan_step, (params, state), length=20)
    return loss(params)


@pytest.mark.slow
@pytest.mark.parametrize("variant", META_VARIANTS)
def test_hyperparameter_gradients_match_finite_differences(variant):
    options, names = META_VARIANTS[variant]
    for name in names:
        f = lambda v, name=name: _loss_after_20_steps(name, v, options)
        v = jnp.asarray(HYPERPARAMS[name], jnp.float64)
        h = 1e-6 * abs(float(v))
        grad = jax.grad(f)(v)
        central = (f(v + h) - f(v - h)) / (2 * h)
        assert np.isfinite(grad) and abs(grad) > 1e-6, (name, grad)
        np.testing.assert_allclose(grad, central, rtol=1e-5, err_msg=name)


def test_bfloat16_params_need_float32_injected_hyperparameters():
    # optax.inject_hyperparams casts injected hyperparameters to the params'
    # dtype by default (optax issue 1414): decay 0.9 becomes bfloat16 0.8984.
    # hyperparam_dtype=jnp.float32 keeps them exact, and the update equals the
    # plain optimizer's.
    params = jnp.asarray([1.0, -2.0, 0.5], jnp.bfloat16)
    grads = jnp.asarray([0.3, 0.7, -1.1], jnp.bfloat16)
    kwargs = dict(learning_rate=1e-2, decay=0.9, eps=1e-8, momentum=0.9)

    def two_updates(tx):
        state = tx.init(params)
        _, state = tx.update(grads, state, params)
        return tx.update(grads, state, params)

    plain_updates, plain_state = two_updates(optax_rmsprop.rmsprop(**kwargs))
    inject = optax.inject_hyperparams(optax_rmsprop.rmsprop, hyperparam_dtype=jnp.float32)
    updates, state = two_updates(inject(**kwargs))
    chex.assert_trees_all_equal(updates, plain_updates)
    # 1 - decay rounds once in float32 instead of in Python: one float32 ulp.
    chex.assert_trees_all_close(state.inner_state, plain_state, rtol=1e-6)
    assert state.hyperparams["decay"].dtype == jnp.float32
    _, cast_state = two_updates(optax.inject_hyperparams(optax_rmsprop.rmsprop)(**kwargs))
    assert float(cast_state.hyperparams["decay"]) == 0.8984375  # the pitfall
    nu_error = jnp.max(jnp.abs(cast_state.inner_state.rms.nu / plain_state.rms.nu - 1))
    assert nu_error > 1e-3  # bfloat16 decay: a relative error 4 orders above float32's
