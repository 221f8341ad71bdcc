"""Hints that shape what XLA keeps in memory: the same bits, another graph.

Every XLA-specific workaround of the library is here, behind one switch
(:func:`disabled`, for debugging and for measuring what the hints buy;
``tests/test_xla_hints.py`` measures it). Each is an identity on the values:
with the hints off, every step computes the same numbers and only its memory
and speed change.

* :func:`identity`: XLA computes a value holding a division or a square root
  once and writes it out in full for every pass that needs it; a pass that
  starts from its own copy of the inputs computes it for itself.
* :func:`kept`: XLA recomputes a stored value inside each reader from float32
  intermediates it then writes out; its readers load it back instead.
* :func:`after`: XLA keeps a copy of a buffer overwritten in place while a pass
  it cannot order still reads the old one; this orders the passes.
* :func:`keeps_read_back`: before jaxlib 0.9.1, XLA writes ``g / denom`` out in
  float32 unless a rounded buffer that the step reads back is :func:`kept`.
* :data:`FUSES_NARROWING_BITCAST`: from jaxlib 0.7.2 XLA fuses a uint16 read
  as two bytes; older XLA writes the bytes out (4-bit codes are unpacked by
  shifts there).

Each combines an element's bits with a 0 (or divides them by a 1) that XLA
cannot see is 0 (or 1), made from an element itself: elementwise, so it fuses
and shards like its input, and LLVM folds it away.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import jaxlib

from optax_rmsprop import _jax_versions

_enabled = True

# jaxlib >= 0.9.1 fuses a rounded buffer read back into the update (measured: 0.4.35, 0.7.2,
# 0.8.3, 0.9.0 need kept; 0.9.1 to 0.10.2 do not).
FUSES_ROUNDED_READ_BACK = _jax_versions.release(jaxlib.__version__) >= (0, 9, 1)
# jaxlib >= 0.7.2 fuses a uint16 read as two bytes (measured: 0.7.2, 0.10.2; not 0.4.35).
FUSES_NARROWING_BITCAST = _jax_versions.release(jaxlib.__version__) >= (0, 7, 2)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Every hint off for the steps traced inside the block (each is then ``x``)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def enabled() -> bool:
    """Whether the hints apply to the step being traced."""
    return _enabled


def keeps_read_back() -> bool:
    """A rounded buffer that the step reads back must be :func:`kept` (older XLA)."""
    return _enabled and not FUSES_ROUNDED_READ_BACK


def unpacks_by_bytes() -> bool:
    """4-bit codes are unpacked by whole-byte operations (XLA fuses a narrowing bitcast)."""
    return _enabled and FUSES_NARROWING_BITCAST


_COMBINE = {1: jnp.bitwise_or, 2: jnp.bitwise_xor}  # x op 0 == x, one operation per copy
_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def identity(x: jax.Array, copy: int) -> jax.Array:
    """``x``, bit for bit, as copy ``copy`` (1 or 2): a computation apart from ``x``'s
    and from the other copy's."""
    if not _enabled:
        return x
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
    if not _enabled:
        return x
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
    if not _enabled:
        return x
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
