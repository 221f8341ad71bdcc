"""A candidate for the 8-bit maps: the dynamic map in base 8, with an exact codec of a few integer ops.

The library's 8-bit maps are Dettmers et al.'s dynamic map: values spaced
linearly within each decade ``(10**-(e+1), 10**-e]``, half as many per decade
going down. Its powers of ten make the codec costly on XLA:CPU: each element
needs its decade's constants, chosen by chains of selects
(``benchmarks.codec_floor`` measures what that costs). In base 8 the same
structure, ``2**(bits-1-e)`` values linearly spaced in ``(8**-(e+1), 8**-e]``,
has powers of two only:

* code ``c`` (``n = 2**k <= c < 2n``) stands for ``(7c - 6n + 7) * 2**(2k - 3 bits)``,
  an integer below ``2**11`` times a power of two, so every value is exact in
  float32, and decoding is count-leading-zeros, integer arithmetic and one
  multiplication by a power of two built from its bits;
* the boundary between codes ``c`` and ``c + 1`` is ``I * 2**(2k - 3 bits - 1)``
  with ``I = 14c - 12n + 21`` (``n`` the decade of ``c + 1``), squared for ``nu``:
  exact in float32 too, so encoding needs no split constants. The decade comes
  from the value's binary exponent, the midpoint formula inverted (biased down
  by 0.01 code) gives the code or the one below it, and one exact comparison
  settles it.

Range and resolution stay those of the base-10 map: ``nu``'s top decade holds
128 values in ``(1/8, 1]`` (spacing 0.0068 against 0.0070 in base 10) and its
lower edge is ``2**-24`` in ``sqrt`` (6e-8 against 1e-8); the signed map's
runs from ``2**-18`` to 1 (base 10: ``1e-6``).

Not the library's map: ``benchmarks.codec_floor`` runs the int8 step with it
(:func:`install`, in a child process), and ``tests/test_benchmarks.py`` checks
that its codes are the nearest map values and that it decodes exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# The midpoint formula's estimate is biased down by 0.01 code, more than its float32
# error (about 1e-4 code), so that it is the code or the one below, never above.
_BIAS = np.float32(7 * 0.01)


def magnitudes(bits: int, *, zero_free: bool) -> np.ndarray:
    """The map's ``2**bits`` magnitudes (in its own domain), ascending, in float64.

    ``zero_free`` (``nu``): index 0 stands for the lower edge ``2**-(3 bits)``;
    else (the signed maps' magnitudes) for 0.
    """
    values = [2.0 ** (-3 * bits) if zero_free else 0.0]
    for k in range(bits):
        n = 2**k
        values += [(7 * c - 6 * n + 7) * 2.0 ** (2 * k - 3 * bits) for c in range(n, 2 * n)]
    return np.asarray(values)


def _power_of_two(exponent: jax.Array) -> jax.Array:
    """``2.0**exponent`` in float32, exactly (``exponent`` int32, in the normal range)."""
    return jax.lax.bitcast_convert_type((exponent + 127) << 23, jnp.float32)


def _decade(c: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(k, n = 2**k)`` with ``n <= c < 2n``, for ``1 <= c < 2**24``.

    ``k`` is the exponent of ``c`` as a float32 (exact): CPUs without AVX-512
    have no vector count-leading-zeros, and LLVM emulates it.
    """
    k = (_as_int(c.astype(jnp.float32)) >> 23) - 127
    return k, jnp.left_shift(1, k)


def _magnitude(index: jax.Array, bits: int) -> jax.Array:
    """The map value at ``index`` (0 stands for the lower edge): exact in float32."""
    k, n = _decade(jnp.maximum(index, 1))
    return (7 * index - 6 * n + 7).astype(jnp.float32) * _power_of_two(2 * k - 3 * bits)


def _boundary(c: jax.Array, bits: int, *, squared: bool, zero: bool) -> jax.Array:
    """The boundary between codes ``c`` and ``c + 1``, in the coded value's domain, exactly."""
    k, n = _decade(c + 1)
    i = 14 * c - 12 * n + 21
    if squared:
        return (i * i).astype(jnp.float32) * _power_of_two(4 * k - 6 * bits - 2)
    if zero:  # code 0 stands for 0: the first boundary is half of code 1's 8 * 2**-3bits
        i = jnp.where(c == 0, 8, i)
    return i.astype(jnp.float32) * _power_of_two(2 * k - 3 * bits - 1)


def _nearest(magnitude: jax.Array, bits: int, *, squared: bool, zero: bool) -> jax.Array:
    """The code of the map value nearest ``magnitude`` (in ``[0, 1]``; ``sqrt`` for ``nu``)."""
    top = 2**bits - 1
    y = jnp.sqrt(magnitude) if squared else magnitude
    exponent = (_as_int(y) >> 23) - 127  # floor(log2 y)
    # floor(x / 3) for x in [0, 3 bits): (11 x) >> 5, no integer division (which XLA
    # deems expensive: it then splits the encoder and writes a float32 value out)
    k = (jnp.clip(exponent + 3 * bits, 0, 3 * bits - 1) * 11) >> 5
    n = jnp.left_shift(1, k)
    # y = (7c - 6n + 7) * 2**(2k - 3 bits), inverted; the nearest c rounds at c + 1/2
    t = y * _power_of_two(3 * bits - 2 * k) + (6 * n).astype(jnp.float32) - (3.5 + _BIAS)
    c = jnp.clip(jnp.floor(t * np.float32(1 / 7)).astype(jnp.int32), 0, top)
    # compared as bit patterns (the same order for non-negative floats): a float
    # comparison here made XLA:CPU split the encoder and write a float32 value out
    boundary = _boundary(jnp.minimum(c, top - 1), bits, squared=squared, zero=zero)
    above = _as_int(magnitude) >= _as_int(boundary)
    return jnp.where((c < top) & above, c + 1, c)


def _as_int(x: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(x, jnp.int32)


def encode(x: jax.Array, codebook) -> jax.Array:
    """The codes of the base-8 map values nearest ``x`` (an 8-bit ``codebook`` of the library)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    magnitude = jax.lax.bitcast_convert_type(bits & np.uint32(0x7FFFFFFF), jnp.float32)
    magnitude = jnp.where(magnitude <= 1, magnitude, np.float32(1))  # > 1 and NaN: the top
    if not codebook.signed:
        return _nearest(magnitude, 8, squared=True, zero=False).astype(codebook.code_dtype)
    code = _nearest(magnitude, 7, squared=False, zero=True)
    return jnp.where(bits >> 31 == 1, -code, code).astype(codebook.code_dtype)


def decode(codes: jax.Array, codebook) -> jax.Array:
    """The base-8 map values (float32, relative to absmax) that ``codes`` stand for."""
    index = codes.astype(jnp.int32)
    if not codebook.signed:
        value = _magnitude(index, 8)
        return value * value
    magnitude = jnp.abs(index)
    value = jnp.where(magnitude == 0, np.float32(0), _magnitude(magnitude, 7))
    return jnp.where(index < 0, -value, value)


def install() -> None:
    """Makes the library's 8-bit state use this map (4-bit maps unchanged), in this process.

    For benchmarks only: call it before anything is traced. Stored codes mean
    other values than the library's, so a state must not outlive the process.
    """
    from optax_rmsprop import _quantize

    library_encode, library_decode = _quantize.encode, _quantize.decode

    def patched_encode(x, codebook):
        return (encode if codebook.bits == 8 else library_encode)(x, codebook)

    def patched_decode(codes, codebook):
        return (decode if codebook.bits == 8 else library_decode)(codes, codebook)

    _quantize.encode, _quantize.decode = patched_encode, patched_decode
