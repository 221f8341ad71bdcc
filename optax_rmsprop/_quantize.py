"""Block-wise dynamic 8-bit quantization: how an 8-bit optimizer state is encoded.

An array is cut into blocks along its last axis; each block keeps one float32
``absmax`` and one 8-bit code per element. A code indexes a *dynamic* map of
values in ``[0, 1]`` (unsigned, for ``nu >= 0``) or ``[-1, 1]`` (signed, for
first moments): in decade ``e`` (values in ``(10**-(e+1), 10**-e]``) the map
has ``2**(bits-1-e)`` linearly spaced values, so the relative precision is
about the same from ``absmax`` down to ``1e-7 * absmax``, and 0 is exact.
This is the scheme of Dettmers et al. (2022), as in bitsandbytes and torchao;
an affine (linear) int8 map instead rounds every small ``nu`` to 0, and a
zero-gradient coordinate then divides by ``eps`` alone.

Layout. The codes have the array's own shape (so they shard like it) and the
scales shape ``(..., n_blocks)``. With ``L`` the last axis and ``B`` the block
size, ``n_blocks = ceil(L / B)`` blocks of equal length ``ceil(L / n_blocks)``
(the last padded by fewer than ``n_blocks`` elements), so both the block
length and the padding follow from the two shapes alone.

References:
  Dettmers, Lewis, Shleifer and Zettlemoyer, `8-bit Optimizers via Block-wise
  Quantization <https://arxiv.org/abs/2110.02861>`_, ICLR 2022.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class QuantizedArray(NamedTuple):
    """A real array as 8-bit codes and one float32 scale per block.

    Attributes:
      codes: ``uint8`` (unsigned map) or ``int8`` (signed map), the array's shape.
      scales: ``float32`` absmax of each block, shape ``(..., n_blocks)``.
    """

    codes: jax.Array
    scales: jax.Array


# -- the dynamic maps -----------------------------------------------------------
def _power_of_ten(exponent: jax.Array, bits: int) -> jax.Array:
    """``10.0**-exponent`` for integer ``exponent`` in ``[0, bits)``, in float32, by selects.

    Exact float32 constants and no transcendental: cheap on every backend.
    """
    value = jnp.ones(exponent.shape, jnp.float32)
    for e in range(1, bits):
        value = jnp.where(exponent == e, np.float32(10.0**-e), value)
    return value


def magnitude(index: jax.Array, bits: int) -> jax.Array:
    """The map's magnitude at ``index`` (0 .. 2**bits - 1), in float32.

    Index 0 is 0. Indices ``n .. 2n - 1`` (``n = 2**(bits-1-e)``) are decade
    ``e``: ``10**-e * (0.1 + 0.9 * (k + 1) / n)`` for ``k = index - n``.
    Computed with integer and select operations rather than looked up, so that
    it runs elementwise on sharded codes (a table gather needs the table on the
    codes' mesh) and costs no transcendental function.
    """
    i = jnp.maximum(index.astype(jnp.int32), 1)
    log_n = 31 - jax.lax.clz(i)  # floor(log2(i))
    n = jnp.left_shift(1, log_n)
    fraction = 0.1 + 0.9 * (i - n + 1).astype(jnp.float32) / n.astype(jnp.float32)
    value = _power_of_ten(bits - 1 - log_n, bits) * fraction
    return jnp.where(index == 0, 0.0, value)


def magnitudes(bits: int) -> np.ndarray:
    """The whole map: the ``2**bits`` magnitudes in ``[0, 1]``, ascending."""
    return np.asarray(magnitude(jnp.arange(2**bits), bits))


def _encode_magnitude(v: jax.Array, bits: int) -> jax.Array:
    """The index of the nearest map magnitude to each ``v`` in ``[0, 1]``, as int32.

    Arithmetic, not a search: the decade ``e`` (``v`` in ``(10**-(e+1),
    10**-e]``, found by comparisons) gives the segment, the position inside it
    is linear. The candidate and its two neighbours are compared exactly, so
    segment edges round to nearest too.
    """
    e = jnp.zeros(v.shape, jnp.int32)
    for j in range(1, bits):
        e = e + (v <= np.float32(10.0**-j)).astype(jnp.int32)
    n = jnp.left_shift(1, bits - 1 - e)  # decade e holds n values, at indices n .. 2n - 1
    scaled = v / _power_of_ten(e, bits)  # in (0.1, 1] for this decade
    position = jnp.round((scaled - 0.1) / 0.9 * n.astype(v.dtype)) - 1
    index = jnp.clip(n + position.astype(jnp.int32), 0, 2**bits - 1)
    best, best_error = index, jnp.abs(magnitude(index, bits) - v)
    for other in (jnp.maximum(index - 1, 0), jnp.minimum(index + 1, 2**bits - 1)):
        error = jnp.abs(magnitude(other, bits) - v)
        best, best_error = (
            jnp.where(error < best_error, other, best),
            jnp.minimum(error, best_error),
        )
    return best


# -- blocks -----------------------------------------------------------------------
def num_blocks(length: int, block_size: int) -> int:
    return max(1, math.ceil(length / block_size))


def _blocked(x: jax.Array, n_blocks: int) -> jax.Array:
    """``x`` padded on the last axis and reshaped to ``(..., n_blocks, block_length)``."""
    length = x.shape[-1]
    block_length = math.ceil(length / n_blocks)
    pad = n_blocks * block_length - length
    if pad:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    return x.reshape(*x.shape[:-1], n_blocks, block_length)


def _unblocked(x: jax.Array, length: int) -> jax.Array:
    return x.reshape(*x.shape[:-2], -1)[..., :length]


def quantize(x: jax.Array, n_blocks: int, *, signed: bool) -> QuantizedArray:
    """``x`` (real, at least 1-D) as codes on the dynamic map and per-block absmax.

    ``n_blocks`` blocks along the last axis (:func:`num_blocks` gives it for a
    block size); ``signed`` picks the int8 map over ``[-1, 1]`` instead of the
    uint8 map over ``[0, 1]`` (negative values then quantize to 0).
    """
    blocks = _blocked(x.astype(jnp.float32), n_blocks)
    absmax = jnp.max(jnp.abs(blocks), axis=-1)
    normalized = blocks / jnp.where(absmax > 0, absmax, 1.0)[..., None]
    if signed:
        magnitude = _encode_magnitude(jnp.abs(normalized), 7)
        codes = jnp.where(normalized < 0, -magnitude, magnitude).astype(jnp.int8)
    else:
        codes = _encode_magnitude(jnp.maximum(normalized, 0.0), 8).astype(jnp.uint8)
    return QuantizedArray(_unblocked(codes, x.shape[-1]), absmax)


def dequantize(q: QuantizedArray, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """The values ``q`` stands for, in ``dtype``."""
    codes = _blocked(q.codes, q.scales.shape[-1]).astype(jnp.int32)
    if q.codes.dtype == jnp.int8:
        values = jnp.sign(codes) * magnitude(jnp.abs(codes), 7)
    else:
        values = magnitude(codes, 8)
    values = values * q.scales[..., None]
    return _unblocked(values, q.codes.shape[-1]).astype(dtype)
