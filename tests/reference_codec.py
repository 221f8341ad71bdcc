"""An independent encoder for the dynamic maps, to check the library's against.

A lookup table, built in NumPy from the map's boundaries: the top 16 bits of a
float32 value (sign, exponent and 7 mantissa bits) fix its code up to the few
boundaries inside that bucket, and comparisons with those settle it. The
library's encoder is arithmetic; the two agree on every float32 in ``[0, 2)``
(a slow test), and both are checked against a brute-force nearest-value search.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from optax_rmsprop._quantize import Codebook

_TOP16_OF_ONE = 0x3F80  # the top 16 bits of float32 1.0: buckets 0 .. 0x3F80 cover [0, 1]


@functools.cache
def tables(codebook: Codebook) -> tuple[np.ndarray, np.ndarray, int]:
    """``(first, bounds, extra)``: per bucket, the boundaries at or below its smallest
    float; the boundaries padded with ``extra`` infinities; the most inside one bucket."""
    bounds = codebook.boundaries()
    lowest = (np.arange(_TOP16_OF_ONE + 2, dtype=np.uint32) << 16).view(np.float32)
    below = np.searchsorted(bounds, lowest, side="right")
    extra = int(np.max(np.diff(below)))
    padded = np.concatenate([bounds, np.full(extra, np.inf, np.float32)])
    return below[:-1].astype(np.int32), padded, extra


def table_encode(x: jax.Array, codebook: Codebook) -> jax.Array:
    """The codes of ``x`` by table lookup (same contract as ``_quantize.encode``)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    magnitude_bits = bits & np.uint32(0x7FFFFFFF)
    magnitude = jax.lax.bitcast_convert_type(magnitude_bits, jnp.float32)
    magnitude = jnp.where(magnitude <= 1, magnitude, np.float32(1))  # > 1, inf, NaN: the top
    first, bounds, extra = tables(codebook)
    # values above 1, infinities and NaN fall in the top bucket
    bucket = jnp.minimum(magnitude_bits >> 16, np.uint32(_TOP16_OF_ONE)).astype(jnp.int32)
    code = jnp.take(jnp.asarray(first), bucket)
    base = code
    for j in range(extra):
        code = code + (magnitude >= jnp.take(jnp.asarray(bounds), base + j)).astype(jnp.int32)
    if codebook.signed:
        code = jnp.where(bits >> 31 == 1, -code, code)
    return code.astype(codebook.code_dtype)
