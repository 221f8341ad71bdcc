"""The 8-bit maps of optax_rmsprop 0.1: Dettmers et al.'s dynamic map in base 10, and its codec.

The library's dynamic maps space their values linearly within each decade of
8, ``(8**-(e+1), 8**-e]``. Version 0.1 used decades of 10, as bitsandbytes
does: code ``n + k`` of decade ``e`` (``n = 2**(bits-1-e)`` codes) stood for
``10**-e * (0.1 + 0.9 * (k + 1) / n)``. Its powers of ten made the codec costly
on XLA:CPU: every element needs its decade's constants, chosen by chains of
selects, and each boundary ``(18 i - 16 n + 27) * S`` is computed in two parts
so that it rounds once. This module keeps that codec, exact as it shipped,
so that ``benchmarks.codec_floor`` can measure what the base-8 maps saved
(:func:`install`, in a child process); ``tests/test_benchmarks.py`` checks
that its codes are the nearest map values.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optax_rmsprop import _quantize

_SPLIT_BITS = 10  # J = J_hi + J_lo with J_lo < 2**10; s_hi keeps 11 significant bits


def magnitudes(bits: int, *, zero_free: bool) -> np.ndarray:
    """The base-10 map's ``2**bits`` magnitudes, ascending, in float64.

    ``zero_free`` (``nu``): index 0 stands for the lower edge ``1e-8``; else for 0.
    """
    values = [1e-8 if zero_free else 0.0]
    for e in reversed(range(bits)):
        n = 2 ** (bits - 1 - e)
        values += [10.0**-e * (0.1 + 0.9 * (k + 1) / n) for k in range(n)]
    return np.asarray(values)


NU = _quantize.Codebook("nu", False, magnitudes(8, zero_free=True), sqrt_domain=True)
SIGNED = _quantize.Codebook("signed", True, magnitudes(7, zero_free=False), sqrt_domain=False)


class _Decades(NamedTuple):
    """Per decade ``k`` (codes ``n .. 2n-1``, ``n = 2**k``), float32 constants: the
    boundary below code ``n``, the slope ``2n * 10**(e+1)`` that gives a value's
    midpoint number, and the boundary scale ``S`` in a high (11 bits) and a low part."""

    lower: tuple[np.float32, ...]
    slope: tuple[np.float32, ...]
    s_hi: tuple[np.float32, ...]
    s_lo: tuple[np.float32, ...]


@functools.cache
def _decades(codebook: _quantize.Codebook) -> _Decades:
    bits = int(np.log2(len(codebook.magnitudes)))
    bounds = codebook.boundaries()
    lower, slope, s_hi, s_lo = [], [], [], []
    for k in range(bits):
        n, e = 2**k, bits - 1 - k
        scale = 10.0 ** -(e + 1) / (2 * n)
        scale = scale * scale if codebook.sqrt_domain else scale
        mantissa, exponent = np.frexp(scale)
        high = np.ldexp(np.floor(mantissa * 2.0 ** (_SPLIT_BITS + 1)), exponent - _SPLIT_BITS - 1)
        lower.append(bounds[n - 1])
        slope.append(np.float32(2 * n * 10.0 ** (e + 1)))
        s_hi.append(np.float32(high))
        s_lo.append(np.float32(scale - high))
    return _Decades(*(tuple(c) for c in (lower, slope, s_hi, s_lo)))


def _boundary(index, n, s_hi, s_lo, *, squared: bool):
    """Boundary ``index`` of decade ``n``: ``J * S`` with one rounding that matters."""
    i = 18 * index - 16 * n + 27
    j = i * i if squared else i
    high = (j & ~((1 << _SPLIT_BITS) - 1)).astype(jnp.float32)
    low = (j & ((1 << _SPLIT_BITS) - 1)).astype(jnp.float32)
    return high * s_hi + (low * s_hi + j.astype(jnp.float32) * s_lo)


def _ordered(x: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(x, jnp.int32)


def encode(x: jax.Array, codebook: _quantize.Codebook) -> jax.Array:
    """The codes of the base-10 map values nearest ``x`` (``codebook``: :data:`NU` or :data:`SIGNED`).

    The decade by one comparison per decade, the midpoint formula inverted, and
    two exact comparisons with the boundaries around the estimate.
    """
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    magnitude = jax.lax.bitcast_convert_type(bits & np.uint32(0x7FFFFFFF), jnp.float32)
    magnitude = jnp.where(magnitude <= 1, magnitude, np.float32(1))  # > 1 and NaN: the top
    constants = _decades(codebook)
    n = jnp.zeros(x.shape, jnp.int32)
    slope = s_hi = s_lo = jnp.zeros(x.shape, jnp.float32)
    ordered = _ordered(magnitude)
    for k, (lower, *decade) in enumerate(zip(*constants, strict=True)):
        above = ordered >= np.float32(lower).view(np.int32)
        n = jnp.where(above, 2**k, n)
        slope, s_hi, s_lo = (
            jnp.where(above, c, v) for c, v in zip(decade, (slope, s_hi, s_lo), strict=True)
        )
    domain = jnp.sqrt(magnitude) if codebook.sqrt_domain else magnitude
    estimate = jnp.floor((domain * slope + (16 * n - 27).astype(jnp.float32)) * np.float32(1 / 18))
    code = jnp.clip(estimate.astype(jnp.int32) + 1, n, 2 * n - 1)
    at = functools.partial(_boundary, n=n, s_hi=s_hi, s_lo=s_lo, squared=codebook.sqrt_domain)
    code = jnp.where((code > n) & (ordered < _ordered(at(code - 1))), code - 1, code)
    code = jnp.where((code < 2 * n - 1) & (ordered >= _ordered(at(code))), code + 1, code)
    code = jnp.where(n == 0, 0, code)  # below the first boundary
    if codebook.signed:
        code = jnp.where(bits >> 31 == 1, -code, code)
    return code.astype(codebook.code_dtype)


def decode(codes: jax.Array, codebook: _quantize.Codebook) -> jax.Array:
    """The base-10 map values (float32, relative to absmax) that ``codes`` stand for.

    ``(n + 9 (i - n + 1)) * 10**-(e+1) / n``: the decade from the code's float32
    exponent, its power of ten by selects.
    """
    index = codes.astype(jnp.int32)
    magnitude_index = jnp.abs(index)
    bits = int(np.log2(len(codebook.magnitudes)))
    i = jnp.maximum(magnitude_index, 1)
    k = (_ordered(i.astype(jnp.float32)) >> 23) - 127
    n = jnp.left_shift(1, k)
    inverse_n = jax.lax.bitcast_convert_type(jnp.left_shift(127 - k, 23), jnp.float32)
    decade = bits - 1 - k
    power = jnp.full(index.shape, np.float32(0.1))
    for e in range(1, bits):
        power = jnp.where(decade == e, np.float32(10.0 ** -(e + 1)), power)
    numerator = (n + 9 * (i - n + 1)).astype(jnp.float32)
    magnitude = jnp.where(
        magnitude_index == 0, np.float32(codebook.magnitudes[0]), numerator * (power * inverse_n)
    )
    value = magnitude * magnitude if codebook.sqrt_domain else magnitude
    return jnp.where(index < 0, -value, value) if codebook.signed else value


def install() -> None:
    """Makes the library's 8-bit state use the base-10 maps (4-bit maps unchanged), in this process.

    For benchmarks only: call it before anything is traced. Stored codes mean
    other values than the library's, so a state must not outlive the process.
    """
    library_encode, library_decode = _quantize.encode, _quantize.decode

    def base10(codebook):
        return SIGNED if codebook.signed else NU

    def patched_encode(x, codebook):
        if codebook.bits != 8:
            return library_encode(x, codebook)
        return encode(x, base10(codebook))

    def patched_decode(codes, codebook):
        if codebook.bits != 8:
            return library_decode(codes, codebook)
        return decode(codes, base10(codebook))

    _quantize.encode, _quantize.decode = patched_encode, patched_decode
