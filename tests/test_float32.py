"""Every option set with x64 off, as users run JAX: float32 to rounding, bf16 params, int8 state.

The rest of the library's tests run with float64 enabled (``tests/conftest.py``);
this module turns it off. Each step is compared with the float64 NumPy
reference (``tests/reference.py``) restarted from the library's params, so an
error is one step's rounding, not the drift of many steps.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_rmsprop
from tests import jax_compat
from tests.helpers import CASES, run_both

STEPS = 60
# Normwise relative error of one step's update against the reference: a few
# float32 ulps (2**-23 = 1.2e-7) in general; a float32 schedule (0.97**t) adds a
# few more. Centered: var = nu - mu**2 cancels, losing bits in proportion to
# nu / var. Centered + bias correction: at t=0 var = g**2 - g**2 = 0 exactly, so
# the first step is rounding noise over eps in any float32 implementation.
TOLERANCE = {"bias_correction_centered": 5e-3}
CENTERED_TOLERANCE, TOLERANCE_DEFAULT = 5e-5, 1e-5


@pytest.fixture(autouse=True)
def _float64():  # overrides tests/conftest.py's fixture of the same name
    with jax_compat.enable_x64(False):
        yield


def _tolerance(name: str) -> float:
    default = CENTERED_TOLERANCE if CASES[name].centered else TOLERANCE_DEFAULT
    return TOLERANCE.get(name, default)


def _worst_step_error(traj, ref_traj) -> float:
    """The largest normwise relative error of any step's update, over steps and leaves."""
    return max(
        float(np.max(np.abs(np.asarray(got[k], want[k].dtype) - want[k])) / np.max(np.abs(want[k])))
        for got, want in zip(traj, ref_traj, strict=True)
        for k in want
    )


def _float_state_dtypes(state) -> set:
    return {x.dtype for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)}


def test_x64_is_off():
    assert jnp.asarray(1.0).dtype == jnp.float32
    assert jnp.arange(3).dtype == jnp.int32 and not jax.config.read("jax_enable_x64")


@pytest.mark.parametrize("dtype", [np.float32, np.complex64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_option_set_matches_reference_to_float32_rounding(name, dtype):
    traj, ref_traj, state, _ = run_both(CASES[name], dtype, steps=STEPS, resync=True)
    assert all(u.dtype == dtype for u in traj[-1].values())
    assert _float_state_dtypes(state) <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.complex64)}
    assert _worst_step_error(traj, ref_traj) < _tolerance(name)


def test_the_comparison_can_fail():
    # decay 0.9 against 0.9001: a relative change of the update 4 orders below
    # bfloat16's rounding, still 10x above the float32 tolerance.
    traj, _, _, _ = run_both(CASES["plain"], np.float32, steps=STEPS, resync=True)
    other = dataclasses.replace(CASES["plain"], decay=0.9001)
    _, ref_traj, _, _ = run_both(other, np.float32, steps=STEPS, resync=True)
    assert _worst_step_error(traj, ref_traj) > 10 * TOLERANCE_DEFAULT


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=lambda d: d.dtype.name)
@pytest.mark.parametrize("name", ["plain", "centered", "momentum", "everything_coupled"])
def test_low_precision_params_with_float32_state(name, dtype):
    """Updates round to the params' dtype; the float32 state tracks the reference's."""
    traj, ref_traj, state, refs = run_both(CASES[name], dtype, steps=STEPS, resync=True)
    assert all(u.dtype == dtype for u in traj[-1].values())
    assert _float_state_dtypes(state) == {jnp.dtype(jnp.float32)}
    # An update is computed in float32, then rounded once to the params' dtype.
    assert _worst_step_error(traj, ref_traj) <= float(jnp.finfo(dtype).eps)
    for k, ref in refs.items():
        np.testing.assert_allclose(state.rms.nu[k], ref.nu, rtol=1e-5)
        if state.momentum is not None:
            np.testing.assert_allclose(state.momentum[k], ref.buf, rtol=1e-4, atol=1e-7)


# -- int8 state ------------------------------------------------------------------
INT8_SHAPE = (4, 2048)  # two leaves of 8,192 parameters: quantized, 32 blocks each


def _dequantized_moments(state) -> dict:
    """The reference's fields from the float32 state the 8-bit state stands for."""
    state = optax_rmsprop.dequantize_state(state)
    return {"nu": state.rms.nu, "m": state.rms.mu, "buf": state.momentum}


@pytest.mark.parametrize("name", ["plain", "momentum", "everything"])  # everything: centered too
def test_int8_state_step_is_the_float32_step_from_the_state_it_stands_for(name):
    cfg = CASES[name]
    int8 = run_both(
        cfg,
        np.float32,
        steps=10,
        shape=INT8_SHAPE,
        resync=_dequantized_moments,
        stored_buffer=lambda state: _dequantized_moments(state)["buf"],
        state_dtype="int8",
    )
    # The update is computed from the state read, the new nu and mu before they
    # are stored and the momentum buffer as stored: float32 rounding, as with
    # float32 state.
    assert _worst_step_error(int8.traj, int8.ref_traj) < _tolerance(name)
    # The stored moments are the new ones to 8-bit precision: the first moments
    # within 2% of the leaf's largest (nearest codes); nu, rounded stochastically,
    # within one step of its grid's top binade, 2**-5 of the largest.
    stored = _dequantized_moments(int8.state)
    for field, trees in stored.items():
        for k, ref in int8.refs.items():
            if trees is not None:
                want = ref.computed_buf if field == "buf" else getattr(ref, field)
                error = np.max(np.abs(np.asarray(trees[k]) - want)) / np.max(np.abs(want))
                assert error < (2**-5 if field == "nu" else 2e-2), (field, k, error)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(int8.state))
    float32 = run_both(cfg, np.float32, steps=1, shape=INT8_SHAPE)
    assert nbytes < 0.3 * sum(x.nbytes for x in jax.tree.leaves(float32.state))
