"""Stochastic rounding: its random bits, and a float cast that rounds with them.

A moving average stored in low precision moves by ``(1 - decay)`` of its
innovation each step; rounded to nearest, a move under half a step of the
stored grid is lost, and at ``decay=0.999`` most are. Rounding up with the
probability that makes the stored value right in expectation keeps every move.

The random bits are a hash of the element's position, the step count and the
buffer's salt: deterministic, resumed exactly from a checkpoint (the count is
in the state), elementwise (they shard like the buffer, with no collective)
and cheap (two integer multiplications per element).

References:
  Gupta, Agrawal, Gopalakrishnan and Narayanan, `Deep Learning with Limited
  Numerical Precision <https://arxiv.org/abs/1502.02551>`_, ICML 2015.
  Zamirai, Zhang, Aberger and De Sa, `Revisiting BFloat16 Training
  <https://arxiv.org/abs/2010.06192>`_, 2020.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_GOLDEN = np.uint32(0x9E3779B9)  # 2**32 / golden ratio: successive counts far apart


def _mix(x: jax.Array) -> jax.Array:
    """A 32-bit integer hash with full avalanche (Wellons' ``lowbias32``)."""
    x = x ^ (x >> 16)
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> 16)


def stream_seed(count: jax.Array, salt: int | jax.Array) -> jax.Array:
    """The scalar seed of one buffer's random bits at step ``count`` (uint32).

    ``salt`` tells the buffers apart: an int, or a uint32 scalar holding one.
    """
    salt = np.uint32(salt % 2**32) if isinstance(salt, int) else salt
    return _mix(jnp.asarray(count).astype(jnp.uint32) * _GOLDEN + salt)


def random_bits(shape: tuple[int, ...], seed: jax.Array) -> jax.Array:
    """Uniform uint32 bits of ``shape``, one per element, from its flat index and ``seed``."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
        stride = stride * shape[axis] % 2**32
    return _mix(index ^ seed)


def stochastic_cast(x: jax.Array, dtype: np.dtype, random: jax.Array) -> jax.Array:
    """``x`` (float32) in the narrower float ``dtype``, rounded to one of its two neighbours.

    Random bits added below the bits that ``dtype`` keeps carry into them with
    probability ``|x - down| / |up - down|``, so the expected result is ``x``
    (down to ``dtype``'s smallest subnormal). One integer add and mask, with
    ``x`` read once, so XLA fuses it into whatever computes ``x``.
    """
    info = jnp.finfo(dtype)
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    if info.minexp == jnp.finfo(jnp.float32).minexp:  # bfloat16: float32's range, one mask
        mask = np.uint32(2 ** (23 - info.nmant) - 1)
    else:  # below dtype's normal range its spacing stops shrinking: drop more bits there
        exponent = ((bits >> 23) & np.uint32(0xFF)).astype(jnp.int32)
        smallest_normal = info.minexp + 127
        drop = jnp.clip(23 - info.nmant + smallest_normal - exponent, 23 - info.nmant, 23)
        mask = (np.uint32(1) << drop.astype(jnp.uint32)) - np.uint32(1)
    rounded = (bits + (random & mask)) & ~mask
    return jax.lax.bitcast_convert_type(rounded, jnp.float32).astype(dtype)
