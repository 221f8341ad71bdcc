"""Hints that shape what XLA keeps in memory: the same bits, another graph.

Every XLA-specific workaround of the library is here. A transformation takes
its :class:`Hints` when it is built (:func:`chosen`): on, or off inside
:func:`disabled` (for debugging and for measuring what the hints buy;
``tests/test_xla_hints.py`` measures it). The choice is a field of the
transformation, never a global read while tracing, so no cached trace can carry
it into a step built with the other choice. Each hint is an identity on the
values: with the hints off, every step computes the same numbers and only its
memory and speed change.

* :meth:`Hints.per_pass`: XLA computes a value holding a division or a square
  root once and writes it out in full for every pass that needs it; a pass that
  starts from its own copy of the inputs (:func:`identity`) computes it for
  itself. :meth:`Hints.per_rounded_pass` does so for a rounded float buffer's one
  pass, before jaxlib 0.9.1 only.
* :meth:`Hints.loaded` (:func:`kept`): XLA recomputes a stored value inside
  each reader from float32 intermediates it then writes out; its readers load
  it back instead. Rounded floats need it before jaxlib 0.9.1 only
  (:data:`FUSES_ROUNDED_READ_BACK`).
* :meth:`Hints.after` (:func:`after`): XLA keeps a copy of a buffer
  overwritten in place while a pass it cannot order still reads the old one;
  this orders the passes.
* :meth:`Hints.unfolded`: XLA:CPU compiles one kernel for fused computations
  that are identical, so same-shaped leaves share their kernels, unless each
  folds a constant of its own (a stochastic-rounding salt) into its code;
  read at run time instead, the salts leave the kernels identical (from jaxlib
  0.9.1: 0.7.2 drops the barrier before fusion, and compiles a kernel per leaf).

Each combines an element's bits with a 0 (or divides them by a 1) that XLA
cannot see is 0 (or 1), made from an element itself: elementwise, so it fuses
and shards like its input, and LLVM folds it away.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib

from optax_rmsprop import _jax_versions

# jaxlib >= 0.9.1 fuses a rounded buffer read back into the update (measured: 0.7.2,
# 0.8.3, 0.9.0 need kept; 0.9.1 to 0.12.1 do not).
FUSES_ROUNDED_READ_BACK = _jax_versions.release(jaxlib.__version__) >= (0, 9, 1)

_choice = True  # what chosen() gives: False inside disabled()


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Every hint off for the transformations built inside the block."""
    global _choice
    previous, _choice = _choice, False
    try:
        yield
    finally:
        _choice = previous


def enabled() -> bool:
    """Whether a transformation built now takes the hints."""
    return _choice


@dataclasses.dataclass(frozen=True)
class Hints:
    """The hints a transformation applies, fixed when it is built.

    Attributes:
      enabled: False makes every hint the identity, traced as nothing.
    """

    enabled: bool = True

    def per_pass(self, fn: Callable[[Any], Any], x: Any, passes: int = 2) -> list[Any]:
        """``fn(x)`` once per pass over a buffer, each from its own copy of ``x``.

        XLA then computes ``fn(x)`` inside each pass, rather than once and
        written out in float32 for all. With the hints off, ``fn`` is traced
        once and the same value serves every pass.
        """
        if not self.enabled:
            return [fn(x)] * passes
        return [fn(jax.tree.map(lambda y, c=c: identity(y, c), x)) for c in range(1, passes + 1)]

    def per_rounded_pass(self, fn: Callable[[Any], Any], x: Any) -> list[Any] | None:
        """:meth:`per_pass` for the one pass that writes a rounded float buffer, before
        jaxlib 0.9.1 only (:data:`FUSES_ROUNDED_READ_BACK`); else None.

        Older XLA keeps in memory a value that this pass and a later one both
        read (the rounded ``nu`` that ``fn`` divides by); newer XLA, and the
        hints off, share it at no cost, so None traces nothing more. ``fn`` is
        traced as a call of its own, which XLA inlines: jax 0.7.2 lowers a
        jaxpr's literals in time quadratic in their number, and ``fn`` nearly
        doubles the step's.
        """
        if not self.enabled or FUSES_ROUNDED_READ_BACK:
            return None
        return [jax.jit(fn)(jax.tree.map(lambda y: identity(y, 1), x))]

    def loaded(self, x: jax.Array, *, codes: bool) -> jax.Array:
        """``x``, a stored buffer the step reads back, loaded by its readers (:func:`kept`).

        Codes always (else XLA recomputes them inside each reader, from float32
        values it writes out); rounded floats only before jaxlib 0.9.1.
        """
        if self.enabled and (codes or not FUSES_ROUNDED_READ_BACK):
            return kept(x)
        return x

    def after(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """``x`` computed after ``y`` (:func:`after`); ``x`` itself with the hints off."""
        return after(x, y) if self.enabled else x

    def unfolded(self, constants: list[int]) -> list[jax.Array]:
        """``constants`` as uint32 scalars that the compiled step reads at run time.

        Behind an optimization barrier, XLA cannot fold them into the kernels
        that use them, so leaves that differ only in such a constant share one
        compiled kernel. One barrier each: a barrier over all of them makes XLA
        schedule the leaves so that it keeps a copy of one more block-maximum
        buffer per leaf. With the hints off, they are plain constants.
        """
        values = [jnp.asarray(c % 2**32, jnp.uint32) for c in constants]
        return [jax.lax.optimization_barrier(v) for v in values] if self.enabled else values


def chosen() -> Hints:
    """The hints for a transformation built now: on, or off inside :func:`disabled`."""
    return Hints(enabled=_choice)


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
