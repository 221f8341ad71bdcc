"""Bad input gets a clear ValueError that names the argument and its range."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop
from optax_rmsprop import _validation

BAD = [
    (
        "learning_rate",
        -0.1,
        r"learning_rate must be a finite number in \[0, inf\), got -0.1",
    ),
    ("learning_rate", math.inf, r"learning_rate .*got inf"),
    ("learning_rate", math.nan, r"learning_rate .*got nan"),
    ("decay", 1.0, r"decay must be a finite number in \[0, 1\), got 1.0"),
    ("decay", -0.01, r"decay .*\[0, 1\)"),
    ("decay", math.nan, r"decay .*got nan"),
    ("eps", -1e-8, r"eps must be a finite number in \[0, inf\)"),
    ("initial_scale", -1.0, r"initial_scale .*\[0, inf\)"),
    ("momentum", 1.0, r"momentum must be a finite number in \[0, 1\), got 1.0"),
    ("momentum", -0.5, r"momentum .*\[0, 1\)"),
    ("weight_decay", -1e-4, r"weight_decay .*\[0, inf\)"),
    ("decay", "0.9", r"decay must be a number, got '0.9'"),
    ("eps", True, r"eps must be a number, got the bool True"),
]


@pytest.mark.parametrize("name,value,message", BAD)
def test_rmsprop_rejects(name, value, message):
    kwargs = {"learning_rate": 0.1, name: value}
    with pytest.raises(ValueError, match=message):
        optax_rmsprop.rmsprop(**kwargs)


@pytest.mark.parametrize(
    "name,value,message", [b for b in BAD if b[0] in ("decay", "eps", "initial_scale")]
)
def test_scale_by_rms_rejects(name, value, message):
    with pytest.raises(ValueError, match=message):
        optax_rmsprop.scale_by_rms(**{name: value})


@pytest.mark.parametrize("momentum", [None, 0.0, 0])
def test_nesterov_needs_momentum(momentum):
    with pytest.raises(ValueError, match="nesterov=True needs momentum in \\(0, 1\\)"):
        optax_rmsprop.rmsprop(0.1, momentum=momentum, nesterov=True)


@pytest.mark.parametrize("dtype", [jnp.int32, "int16", jnp.complex64, bool, "not-a-dtype"])
def test_state_dtype_must_be_floating_int8_or_int4(dtype):
    match = r"state_dtype must be None, a floating dtype \(float16, bfloat16, float32, float64\)"
    with pytest.raises(ValueError, match=match + ", 'int8' or 'int4'"):
        optax_rmsprop.rmsprop(0.1, state_dtype=dtype)


NOT_A_LEARNING_RATE = [None, "0.1", 1j, [0.1]]


@pytest.mark.parametrize("learning_rate", NOT_A_LEARNING_RATE)
def test_learning_rate_must_be_a_number_an_array_or_a_schedule(learning_rate):
    """Refused at construction, not by an AttributeError at the first update."""
    match = r"learning_rate must be a number, a JAX array or an optax schedule"
    with pytest.raises(ValueError, match=match + r".*, got " + re.escape(repr(learning_rate))):
        optax_rmsprop.rmsprop(learning_rate)


@pytest.mark.parametrize("learning_rate", [0.1, np.float32(0.1), jnp.asarray(0.1)])
def test_learning_rate_numbers_arrays_and_schedules_are_accepted(learning_rate):
    params = jnp.ones(2)
    for lr in (learning_rate, optax.constant_schedule(learning_rate)):
        tx = optax_rmsprop.rmsprop(lr)
        updates, _ = tx.update(params, tx.init(params), params)
        np.testing.assert_allclose(updates, -0.1 / (1 - 0.9) ** 0.5, rtol=1e-5)


@pytest.mark.parametrize("name", ["decay", "eps", "initial_scale"])
def test_none_is_not_a_hyperparameter(name):
    with pytest.raises(ValueError, match=rf"^{name} must be a number, got None\.$"):
        optax_rmsprop.scale_by_rms(**{name: None})


UNSUPPORTED_STATE_DTYPES = [
    ("float8_e4m3fn", ""),
    ("float8_e5m2", ""),
    ("int2", ""),
    ("complex64", " Complex parameters get complex momentum buffers"),
]


@pytest.mark.parametrize("dtype,hint", UNSUPPORTED_STATE_DTYPES)
def test_state_dtype_check_names_what_is_supported(dtype, hint):
    allowed = r"None, a floating dtype \(float16, bfloat16, float32, float64\), 'int8' or 'int4'"
    with pytest.raises(ValueError, match=rf"^state_dtype must be {allowed}, got {dtype}\.{hint}"):
        _validation.check_floating_state_dtype(jnp.dtype(dtype))


@pytest.mark.parametrize("dtype", _validation.FLOATING_STATE_DTYPES)
def test_state_dtype_check_accepts_the_floats_the_step_computes_in(dtype):
    _validation.check_floating_state_dtype(jnp.dtype(dtype))
    params = jnp.ones(4)
    tx = optax_rmsprop.rmsprop(0.1, state_dtype=dtype)
    updates, _ = tx.update(params, tx.init(params), params)
    assert bool(jnp.all(jnp.isfinite(updates)))


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "int2"])
def test_rmsprop_refuses_unsupported_state_dtypes_at_construction(dtype):
    allowed = r"None, a floating dtype \(float16, bfloat16, float32, float64\), 'int8' or 'int4'"
    for given in (dtype, jnp.dtype(dtype)):  # as users write it, and as a dtype
        with pytest.raises(ValueError, match=rf"^state_dtype must be {allowed}, got {dtype}\.$"):
            optax_rmsprop.rmsprop(0.1, state_dtype=given)


def test_boundaries_are_accepted_and_behave():
    params, grads = jnp.ones(2), jnp.asarray([0.5, -2.0])
    # lr 0: no step at all. decay 0: nu is g**2, so the step is lr * sign(g) (eps 0).
    frozen = optax_rmsprop.rmsprop(0.0, decay=0.0, eps=0.0, initial_scale=0.0, momentum=0.0)
    updates, _ = frozen.update(grads, frozen.init(params), params)
    np.testing.assert_array_equal(updates, [0.0, 0.0])
    sign = optax_rmsprop.rmsprop(0.1, decay=0.0, eps=0.0)
    updates, _ = sign.update(grads, sign.init(params), params)
    np.testing.assert_allclose(updates, [-0.1, 0.1], rtol=1e-6)
    heavy = optax_rmsprop.rmsprop(1e3, decay=0.999999, momentum=0.999, nesterov=True)
    updates, _ = heavy.update(grads, heavy.init(params), params)
    assert bool(jnp.all(jnp.isfinite(updates)))


def test_arrays_and_tracers_are_not_checked():
    """inject_hyperparams passes arrays; their value is the user's business."""
    params = jnp.ones(2)
    odd = optax_rmsprop.rmsprop(
        jnp.asarray(-1.0), decay=jnp.asarray(0.5), momentum=jnp.asarray(0.5)
    )
    updates, _ = odd.update(params, odd.init(params), params)  # a negative lr ascends
    assert bool(jnp.all(updates > 0))
    nu = jax.jit(lambda lr: optax_rmsprop.rmsprop(lr).init(params).rms.nu)(0.1)
    np.testing.assert_array_equal(nu, [0.0, 0.0])


def test_weight_decay_without_params():
    tx = optax_rmsprop.rmsprop(0.1, weight_decay=1e-4)
    g = jnp.ones(3)
    with pytest.raises(ValueError, match=r"weight_decay=0.0001 needs the parameters"):
        tx.update(g, tx.init(g))


def test_gradient_tree_mismatch_is_explained():
    tx = optax_rmsprop.rmsprop(0.1)
    state = tx.init({"w": jnp.ones(3), "b": jnp.ones(1)})
    with pytest.raises(
        ValueError, match="gradient tree does not match the tree the optimizer state"
    ):
        tx.update({"w": jnp.ones(3)}, state)
    with pytest.raises(ValueError, match=r"gradient leaf \['w'\] has shape \(4,\).*shape \(3,\)"):
        tx.update({"w": jnp.ones(4), "b": jnp.ones(1)}, state)
    tx = optax_rmsprop.scale_by_rms()
    with pytest.raises(ValueError, match="scale_by_rms.update: the gradient tree"):
        tx.update([jnp.ones(3)], tx.init({"w": jnp.ones(3)}))


def test_params_tree_mismatch_is_explained():
    tx = optax_rmsprop.rmsprop(0.1, weight_decay=0.1)
    state = tx.init({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match="the params tree does not match"):
        tx.update({"w": jnp.ones(3)}, state, {"v": jnp.ones(3)})
