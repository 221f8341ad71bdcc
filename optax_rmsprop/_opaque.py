"""Values that XLA computes, keeps and orders as the step needs: the same bits, another graph.

Three tools, each an identity on the bits that XLA's simplifier cannot see
through (LLVM then folds it away, so it costs nothing at run time):

* :func:`identity`: a copy of a value that XLA computes apart. When several
  passes over memory need one costly value (one holding a division or a
  square root), XLA computes it once and writes it out in full, whatever
  memory that takes; and it merges identical computations (on CPU it drops
  optimization barriers before it does). A pass that should compute the value
  for itself starts from its own copy of the inputs.
* :func:`kept`: a stored value that its readers read back from memory, instead
  of recomputing it from float32 intermediates that XLA would then write out.
* :func:`after`: a value computed after another, element by element, so that a
  buffer overwritten in place is overwritten only once every pass that reads
  its old value has run (where XLA cannot order two passes, it keeps a copy of
  the old buffer).

Each combines an element's bits with a 0 (or divides them by a 1) that XLA
cannot see is 0 (or 1), made from an element itself: elementwise, so it fuses
and shards like its input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_COMBINE = {1: jnp.bitwise_or, 2: jnp.bitwise_xor}  # x op 0 == x, one operation per copy
_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def identity(x: jax.Array, copy: int) -> jax.Array:
    """``x``, bit for bit, as copy ``copy`` (1 or 2): a computation apart from ``x``'s
    and from the other copy's."""
    if jnp.iscomplexobj(x):
        return jax.lax.complex(identity(x.real, copy), identity(x.imag, copy))
    bits = _bits(x)
    return jax.lax.bitcast_convert_type(_COMBINE[copy](bits, _zero(bits)), x.dtype)


def kept(x: jax.Array) -> jax.Array:
    """``x``, bit for bit, read back from memory by its readers, not recomputed.

    Its bits divided, as integers, by a 1 that XLA cannot see is 1: XLA's
    fusion never duplicates such a division into a second reader, so the
    readers load the stored result (1 byte per 8-bit code, 2 per bfloat16)
    rather than recompute it from the float32 values it came from, which XLA
    would then write out or copy.
    """
    if jnp.iscomplexobj(x):
        return jax.lax.complex(kept(x.real), kept(x.imag))
    if jnp.issubdtype(x.dtype, jnp.integer):
        return jax.lax.div(x, _zero(x) + x.dtype.type(1))
    bits = _bits(x)
    one = _zero(bits) + bits.dtype.type(1)
    return jax.lax.bitcast_convert_type(jax.lax.div(bits, one), x.dtype)


def after(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x``, bit for bit, computed after ``y``: each element reads one of ``y``'s.

    ``y`` has ``x``'s shape, or one trailing axis more (complex codes: its
    real part is read); complex ``y`` is read by its real part.
    """
    if jnp.iscomplexobj(x):
        return jax.lax.complex(after(x.real, y), after(x.imag, y))
    if jnp.iscomplexobj(y):
        y = y.real
    if y.ndim == x.ndim + 1:
        y = y[..., 0]
    if y.shape != x.shape:
        raise ValueError(f"after: shapes {x.shape} and {y.shape} do not match")
    bits = _bits(x)
    zero = _zero(_bits(y)).astype(bits.dtype)
    return jax.lax.bitcast_convert_type(bits | zero, x.dtype)


def _bits(x: jax.Array) -> jax.Array:
    """``x``'s bits as the unsigned integer of its width."""
    return jax.lax.bitcast_convert_type(x, _UNSIGNED[x.dtype.itemsize])


def _zero(bits: jax.Array) -> jax.Array:
    """0 in ``bits``' dtype, from each element: with ``b`` its lowest bit, ``b & (b ^ 1)``."""
    one = bits.dtype.type(1)
    low = bits & one
    return low & (low ^ one)
