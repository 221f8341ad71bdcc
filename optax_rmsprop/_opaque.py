"""Copies of a value that XLA computes apart: the same bits, another computation.

When several passes over memory need one costly value (one holding a division
or a square root), XLA computes it once and writes it out in full, whatever
memory that takes; and it merges identical computations (on CPU it drops
optimization barriers before it does). A pass that should compute the value
for itself instead starts from its own copy of the inputs: each element's
bits combined with a zero that XLA cannot see is zero (made from the same
element, so the copy is elementwise: it fuses, and shards like its input), by
an operation that differs from copy to copy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_COMBINE = {1: jnp.bitwise_or, 2: jnp.bitwise_xor}  # x op 0 == x, one operation per copy
_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def identity(x: jax.Array, copy: int) -> jax.Array:
    """``x``, bit for bit, as copy ``copy`` (1 or 2): a computation apart from ``x``'s
    and from the other copy's.

    With ``b`` an element's lowest bit, ``b & (b ^ 1)`` is 0 whatever the element.
    """
    if jnp.iscomplexobj(x):
        return jax.lax.complex(identity(x.real, copy), identity(x.imag, copy))
    unsigned = _UNSIGNED[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, unsigned)
    low = bits & unsigned(1)
    zero = low & (low ^ unsigned(1))
    return jax.lax.bitcast_convert_type(_COMBINE[copy](bits, zero), x.dtype)
