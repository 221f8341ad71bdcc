"""What XLA makes of the low-precision step: its memory, its graph, its loops.

Each test asserts a fact about XLA's compiled program (``xla_contract``): a
failure says that XLA changed what it keeps or fuses, not that the optimizer
computes a wrong value (``test_quantized_state.py`` and ``test_fidelity.py``
check the values).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import optax_rmsprop
from optax_rmsprop import _storage, _xla_hints
from tests.helpers import jitted_step

F32 = jnp.float32
STATES = ["int8", "int4"]
pytestmark = pytest.mark.xla_contract


def _step_memory(state_dtype, options):
    """XLA's ``memory_analysis`` of one jitted, donated step over 4 leaves of 2048 x 2048.

    Returns ``(temporaries, peak)`` in bytes per parameter, peak being
    arguments plus temporaries (the outputs alias the donated inputs).
    """
    params = {f"p{i}": jax.ShapeDtypeStruct((2048, 2048), F32) for i in range(4)}
    tx = optax_rmsprop.rmsprop(1e-2, state_dtype=state_dtype, **options)
    state = jax.eval_shape(tx.init, params)
    step = jax.jit(jitted_step(tx).__wrapped__, donate_argnums=(0, 1))
    memory = step.lower(params, state, params).compile().memory_analysis()
    n = 4 * 2048 * 2048
    temp = memory.temp_size_in_bytes / n
    return temp, memory.argument_size_in_bytes / n + temp


PEAK_OPTIONS = [{}, dict(momentum=0.9), dict(momentum=0.9, centered=True)]


@pytest.mark.parametrize("state_dtype", STATES)
@pytest.mark.parametrize("options", PEAK_OPTIONS, ids=str)
def test_quantized_step_holds_no_float32_copy_of_its_buffers(options, state_dtype):
    # Each new buffer (nu, mu, momentum) is decoded, updated, reduced to its
    # block absmax and encoded inside fusions, and the passes that need the
    # scaled gradient (the momentum buffer's) compute it for themselves: no
    # float32 buffer is written out. Without momentum the parameter update reads
    # the old nu (and mu), so XLA keeps a copy of each, which the outputs
    # overwrite in place. With momentum it reads only the new buffer, as stored,
    # and the moments are written after the buffer's passes: 8-bit codes are all
    # overwritten in place (only the block maxima are copied); packed 4-bit codes
    # come out of a reduction, which XLA does not write in place. It copies the
    # old 4-bit buffers, which the step uses as computed, and with nu written
    # last it reuses the copies' memory: 0.61 and 0.91 B/param (1.13 with mu last).
    temp, peak = _step_memory(state_dtype, options)
    float32_temp, float32_peak = _step_memory(None, options)
    assert float32_temp == 0
    bits, block = _storage.QUANTIZED[state_dtype]
    buffers = 1 + ("momentum" in options) + ("centered" in options)
    in_place = "momentum" in options and bits == 8
    bound = buffers * (4 / block if in_place else bits / 8 + 4 / block) + 0.05
    if "momentum" in options and bits == 4:
        bound = 0.61 if buffers == 2 else 0.91
    assert temp <= bound, temp
    assert peak < float32_peak - 1, (peak, float32_peak)


@pytest.mark.parametrize("options", PEAK_OPTIONS, ids=str)
def test_bfloat16_step_holds_no_copy_of_its_buffers(options):
    # The step reads the new moments and momentum buffer as stored (rounded to
    # bfloat16), never the old ones, so every buffer is overwritten in place and
    # the peak is float32 state's less 2 bytes per buffer. Before jaxlib 0.9.1, XLA
    # needs the buffer the step reads back (the momentum buffer, else nu) kept in
    # memory, which costs one bfloat16 buffer; the momentum buffer's pass rounds
    # its own nu (Hints.per_rounded_pass), so nu is not kept as well.
    temp, peak = _step_memory(jnp.bfloat16, options)
    _, float32_peak = _step_memory(None, options)
    buffers = 1 + ("momentum" in options) + ("centered" in options)
    if _xla_hints.FUSES_ROUNDED_READ_BACK:
        assert temp < 1e-6, temp  # the step count (stochastic rounding), 4 bytes
        assert peak == pytest.approx(float32_peak - 2 * buffers), (peak, float32_peak)
    else:
        assert temp <= 2 + 1e-6, temp  # and the step count's 4 bytes
        assert peak == pytest.approx(float32_peak - 2 * buffers + 2), (peak, float32_peak)


@pytest.mark.parametrize("state_dtype", STATES)
def test_init_writes_constant_codes_without_quantizing(state_dtype):
    # A constant fill's codes and absmax are known: init is a fill, which XLA
    # does not constant-fold (quantizing a large fill at compile time is slow).
    params = jnp.ones((4096, 4096), F32)
    eqns = {
        name: jax.make_jaxpr(optax_rmsprop.rmsprop(1e-2, state_dtype=name).init)(params).eqns
        for name in (state_dtype, None)
    }
    assert len(eqns[state_dtype]) <= 3 * len(eqns[None]), eqns[state_dtype]
    # fills, and the unit axis that marks 4-bit absmax
    assert {e.primitive.name for e in eqns[state_dtype]} <= {"broadcast_in_dim", "reshape"}


@pytest.mark.parametrize("state_dtype", STATES)
def test_the_quantized_step_stays_a_small_graph(state_dtype):
    # Compile time follows the graph's size (docs/design_notes.md): the bound catches a
    # blow-up.
    def size(state_dtype):
        params = {"w": jax.ShapeDtypeStruct((64, 1024), F32)}
        tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, state_dtype=state_dtype)
        state = jax.eval_shape(tx.init, params)
        text = jax.jit(jitted_step(tx).__wrapped__).lower(params, state, params).as_text()
        return sum(" = " in line for line in text.splitlines())

    assert size(state_dtype) <= 40 * size(None), (size(state_dtype), size(None))
