"""The XLA hints: the same bits as their input for every dtype stored, and what they buy."""

from __future__ import annotations

import contextlib
import re

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest

import optax_rmsprop
from optax_rmsprop import _jax_versions, _xla_hints
from tests.helpers import jitted_step

SPECIALS = [0.0, -0.0, 1.0, -1.5, 1e-30, 3e38, np.inf, -np.inf, np.nan]


def _values(dtype) -> jax.Array:
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        return jnp.arange(info.min, info.max + 1, dtype=jnp.int32).astype(dtype)
    x = jnp.asarray(SPECIALS + list(np.linspace(-3, 3, 23)), jnp.float32)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jax.lax.complex(x, x[::-1]).astype(dtype)
    return x.astype(dtype)


def _same_bits(x, y) -> None:
    assert x.dtype == y.dtype and x.shape == y.shape
    x, y = np.asarray(x), np.asarray(y)
    np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))


DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16, jnp.int8, jnp.uint8, jnp.complex64]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_each_is_an_identity_on_the_bits(dtype):
    x = _values(dtype)
    other = jnp.ones(x.shape, jnp.int8)  # what `after` waits for: any dtype of x's shape
    got = jax.jit(
        lambda x, y: (
            _xla_hints.identity(x, 1),
            _xla_hints.identity(x, 2),
            _xla_hints.kept(x),
            _xla_hints.after(x, y),
        )
    )(x, other)
    for y in got:
        _same_bits(y, x)


def test_per_rounded_pass_copies_only_before_jaxlib_0_9_1():
    # Newer XLA shares the rounded value at no cost: the hint then traces nothing.
    x = _values(jnp.bfloat16)
    assert _xla_hints.Hints(enabled=False).per_rounded_pass(lambda y: y * 2, x) is None
    got = jax.jit(lambda x: _xla_hints.Hints().per_rounded_pass(lambda y: y * 2, x))(x)
    if _xla_hints.FUSES_ROUNDED_READ_BACK:
        assert got is None
    else:
        _same_bits(got[0], x * 2)


def test_after_reads_complex_and_trailing_pair_buffers():
    x = _values(jnp.uint8)[:6].reshape(2, 3)
    pairs = jnp.zeros((2, 3, 2), jnp.complex64)  # complex codes: (re, im) on a trailing axis
    _same_bits(jax.jit(_xla_hints.after)(x, pairs), x)


def test_after_refuses_buffers_of_another_shape():
    with pytest.raises(ValueError, match=r"shapes \(2, 3\) and \(3, 2\)"):
        _xla_hints.after(jnp.zeros((2, 3)), jnp.zeros((3, 2)))


@pytest.mark.xla_contract
@pytest.mark.parametrize("state_dtype", ["int8", "int4"])
def test_the_hints_keep_float32_copies_off_the_quantized_momentum_step(state_dtype):
    # What the hints buy: without them XLA writes g / denom out in float32 for the
    # momentum buffer's passes and copies old buffers.
    def temporaries():
        params = {"w": jax.ShapeDtypeStruct((2048, 2048), jnp.float32)}
        tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, state_dtype=state_dtype)
        state = jax.eval_shape(tx.init, params)
        step = jax.jit(jitted_step(tx).__wrapped__, donate_argnums=(0, 1))
        memory = step.lower(params, state, params).compile().memory_analysis()
        return memory.temp_size_in_bytes / 2048**2

    hinted = temporaries()
    with _xla_hints.disabled():
        assert not _xla_hints.enabled()
        unhinted = temporaries()
    assert _xla_hints.enabled()
    assert hinted <= 1.2 and unhinted >= 4, (hinted, unhinted)


@pytest.mark.xla_contract
def test_a_step_lowers_with_the_hints_of_its_own_choice_whatever_was_traced_before():
    # JAX caches traces by argument shapes, not by Python globals: a hint read while
    # tracing a cached function (as 4-bit unpacking once was) leaks from one step
    # into the next. Each step must lower as it does with every cache empty.
    params = {"w": jax.ShapeDtypeStruct((64, 1024), jnp.float32)}

    def lowered(off: bool) -> str:
        with _xla_hints.disabled() if off else contextlib.nullcontext():
            tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, centered=True, state_dtype="int4")
            state = jax.eval_shape(tx.init, params)
            return jax.jit(jitted_step(tx).__wrapped__).lower(params, state, params).as_text()

    def from_empty_caches(off: bool) -> str:
        jax.clear_caches()
        return lowered(off)

    hinted, unhinted = from_empty_caches(False), from_empty_caches(True)
    assert hinted != unhinted
    assert [lowered(False), lowered(True), lowered(False)] == [hinted, unhinted, hinted]


def _distinct_kernels(leaves: int, state_dtype, *, off: bool) -> int:
    """How many different fused computations the compiled step of ``leaves`` same-shaped
    leaves holds, names and metadata aside."""
    params = {f"w{i}": jax.ShapeDtypeStruct((64, 1024), jnp.float32) for i in range(leaves)}
    with _xla_hints.disabled() if off else contextlib.nullcontext():
        tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, state_dtype=state_dtype)
    state = jax.eval_shape(tx.init, params)
    text = jax.jit(jitted_step(tx).__wrapped__).lower(params, state, params).compile().as_text()
    bodies = re.findall(r"^%?fused_computation\S* \(.*? \{\n(.*?)^}", text, flags=re.M | re.S)
    return len({re.sub(r"%[\w.-]+|, metadata=\{[^}]*\}", "", body) for body in bodies})


@pytest.mark.xla_contract
@pytest.mark.skipif(
    _jax_versions.release(jaxlib.__version__) < (0, 9, 1),
    reason="XLA:CPU drops the optimization barrier before fusion (measured: jaxlib 0.7.2 "
    "drops it, 0.9.1 and 0.12.1 keep it)",
)
@pytest.mark.parametrize("state_dtype", [jnp.bfloat16, "int8", "int4"], ids=str)
def test_same_shaped_leaves_share_their_kernels(state_dtype):
    # Each leaf's stochastic-rounding salt, folded into its kernel, would make every
    # leaf's kernel its own for XLA:CPU to compile; read at run time, one serves all.
    hinted = [_distinct_kernels(n, state_dtype, off=False) for n in (2, 4)]
    unhinted = [_distinct_kernels(n, state_dtype, off=True) for n in (2, 4)]
    assert hinted[0] == hinted[1] and unhinted[0] < unhinted[1], (hinted, unhinted)
