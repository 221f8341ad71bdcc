"""Block-wise 8-bit and 4-bit quantization: the maps and their codecs.

An array is cut into blocks along its last axis; each block keeps one float32
``absmax`` and one 8-bit (or 4-bit) code per element. A code indexes a *map*
of values relative to the block's absmax:

* ``SIGNED`` (first moments ``mu`` and the momentum buffer): the dynamic map
  of Dettmers et al. (2022) over ``[-1, 1]``: a sign and 7 bits of magnitude,
  with ``2**(6-e)`` linearly spaced magnitudes in decade ``e`` (values in
  ``(10**-(e+1), 10**-e]``), and an exact 0.
* ``NU`` (the second moment ``nu >= 0``): the same dynamic decades with 8
  bits, laid over ``sqrt(nu / absmax)`` rather than over ``nu / absmax``, and
  *without zero*: code 0 stands for ``1e-8``, the map's lower edge. The
  square root doubles the range in gradient terms (7 decades of ``|g|``
  instead of 3.5), and the missing zero means a small ``nu`` is never stored as
  0 while its block holds larger values (the zero-point failure of Li et al.,
  2023: the next step would divide by ``sqrt((1 - decay) * g**2)`` alone).
  A block whose absmax is 0 stays exactly 0.
* ``NU4`` (``nu`` in 4 bits): the linear map ``(i + 1) / 16``, ``i = 0..15``,
  also without zero (Li et al.'s choice): a stored ``nu`` is never below
  ``absmax / 16``, so no step divides by ``eps`` alone. Its codes are computed
  arithmetically (``round(16 x) - 1``), with no table.
* ``SIGNED4`` (first moments in 4 bits): the dynamic map with a sign and 3
  bits of magnitude, ``0, 0.01, 0.055, 0.1, 0.325, 0.55, 0.775, 1``.

4-bit codes are stored two per byte along the last axis (:func:`pack`), the
first of each pair in the low nibble; a signed code as its two's complement
nibble.

Codes are the nearest map values (in the map's own domain: ``sqrt`` for
``NU``). The codec has no table, so it fuses into XLA's loops, shards like
its input and lowers in Pallas kernels: decoding is integer and select
arithmetic; encoding finds a value's decade by one comparison per decade,
inverts the decade's midpoint formula and settles the code with two exact
comparisons against the boundaries around it, computed exactly (the linear
``NU4`` map: ``round(16 x) - 1``).

Layout: the codes have the array's own shape (so they shard like it) and the
absmax has shape ``(..., n_blocks)``. With ``L`` the last axis and ``B`` the
block size, ``n_blocks = ceil(L / B)`` blocks of equal length
``ceil(L / n_blocks)`` (the last padded by fewer than ``n_blocks`` elements),
so the block length and the padding follow from the two shapes alone.

References:
  Dettmers, Lewis, Shleifer and Zettlemoyer, `8-bit Optimizers via Block-wise
  Quantization <https://arxiv.org/abs/2110.02861>`_, ICLR 2022.
  Li, Chen and Zhu, `Memory Efficient Optimizers with 4-bit States
  <https://arxiv.org/abs/2309.01507>`_, NeurIPS 2023.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def dynamic_magnitudes(bits: int) -> np.ndarray:
    """The dynamic map's ``2**bits`` magnitudes in ``[0, 1]``, ascending, in float64.

    Index 0 is 0; indices ``n .. 2n - 1`` (``n = 2**(bits-1-e)``) are decade
    ``e``: ``10**-e * (0.1 + 0.9 * (k + 1) / n)`` for ``k = index - n``.
    """
    values = [0.0]
    for e in reversed(range(bits)):
        n = 2 ** (bits - 1 - e)
        values += [10.0**-e * (0.1 + 0.9 * (k + 1) / n) for k in range(n)]
    return np.asarray(values)


@dataclasses.dataclass(frozen=True, eq=False)
class Codebook:
    """A map from 8-bit codes to values relative to the block's absmax.

    Attributes:
      name: ``"nu"`` or ``"signed"``, for messages.
      signed: codes are ``int8`` (sign and magnitude) rather than ``uint8``.
      magnitudes: the map's magnitudes in its own domain, ascending (float64).
      sqrt_domain: the magnitudes stand for ``sqrt(x)``: a code decodes to
        ``magnitude**2`` and nearest means nearest in ``sqrt``.
      bits: the code width, 8 or 4 (stored two codes per byte).
      linear: the magnitudes are ``(i + 1) / n``, coded arithmetically; else
        the dynamic map (or the zero-free ``NU`` variant of it).
    """

    name: str
    signed: bool
    magnitudes: np.ndarray
    sqrt_domain: bool
    bits: int = 8
    linear: bool = False

    @property
    def packed(self) -> bool:
        """Two codes per byte (4-bit maps)."""
        return self.bits == 4

    @property
    def code_dtype(self) -> np.dtype:
        """The dtype of one (unpacked) code."""
        return np.dtype(np.int8 if self.signed else np.uint8)

    @property
    def storage_dtype(self) -> np.dtype:
        """The dtype of the stored codes: ``uint8`` bytes of two 4-bit codes when packed."""
        return np.dtype(np.uint8) if self.packed else self.code_dtype

    @property
    def fill_code(self) -> int:
        """The code of a constant block: 0 for the signed maps (first moments start
        at 0), else the top code (``nu`` starts at ``initial_scale``, its block's absmax)."""
        return 0 if self.signed else len(self.magnitudes) - 1

    def values(self) -> np.ndarray:
        """The float32 value (relative to absmax) of every magnitude code, as decoded."""
        index = np.arange(len(self.magnitudes), dtype=self.code_dtype)
        return np.asarray(jax.jit(decode, static_argnums=1)(index, self))

    def boundaries(self) -> np.ndarray:
        """The float32 values where the nearest magnitude changes, ascending."""
        m = self.magnitudes
        mid = (m[1:] + m[:-1]) / 2
        return (mid * mid if self.sqrt_domain else mid).astype(np.float32)


NU = Codebook(
    "nu",
    signed=False,
    sqrt_domain=True,
    magnitudes=np.concatenate([[1e-8], dynamic_magnitudes(8)[1:]]),
)
SIGNED = Codebook("signed", signed=True, sqrt_domain=False, magnitudes=dynamic_magnitudes(7))
NU4 = Codebook(
    "nu4",
    signed=False,
    sqrt_domain=False,
    magnitudes=np.arange(1, 17) / 16,
    bits=4,
    linear=True,
)
SIGNED4 = Codebook(
    "signed4", signed=True, sqrt_domain=False, magnitudes=dynamic_magnitudes(3), bits=4
)


def encode(x: jax.Array, codebook: Codebook) -> jax.Array:
    """The codes of the map values nearest ``x`` (float32 in ``[-1, 1]``, ``[0, 1]`` for nu).

    No table: arithmetic and exact comparisons, so it fuses, shards and lowers
    everywhere (Pallas kernels included) and every program gives the same codes.
    """
    if codebook.linear:  # the nearest (i + 1) / n, ties up, as the boundaries say
        magnitude = jnp.abs(x.astype(jnp.float32))
        n = len(codebook.magnitudes)
        code = jnp.floor(magnitude * n + 0.5).astype(jnp.int32) - 1
        return jnp.clip(code, 0, n - 1).astype(codebook.code_dtype)
    return _encode_dynamic(x, codebook)


def decode(codes: jax.Array, codebook: Codebook) -> jax.Array:
    """The map values (relative to absmax, float32) that ``codes`` stand for.

    Integer and select operations, no table: XLA then fuses the decoding into
    every consumer, and never writes the decoded state out in float32. It
    gives exactly :meth:`Codebook.values` (a test checks every code).
    """
    index = codes.astype(jnp.int32)
    if codebook.linear:  # (i + 1) / n, exact
        return (index + 1).astype(jnp.float32) * np.float32(1 / len(codebook.magnitudes))
    if codebook.packed:  # 8 magnitudes: a select chain is cheaper than the arithmetic
        magnitude = _selected_magnitude(jnp.abs(index), codebook)
    else:
        magnitude = _dynamic_magnitude(jnp.abs(index), codebook)
    value = magnitude * magnitude if codebook.sqrt_domain else magnitude
    return jnp.where(index < 0, -value, value) if codebook.signed else value


def _selected_magnitude(index: jax.Array, codebook: Codebook) -> jax.Array:
    """The magnitude at ``index`` by a chain of selects over the map's float32 magnitudes."""
    magnitude = jnp.zeros(index.shape, jnp.float32)
    for i, m in enumerate(codebook.magnitudes.astype(np.float32)):
        magnitude = jnp.where(index == i, m, magnitude) if m else magnitude
    return magnitude


def _dynamic_magnitude(index: jax.Array, codebook: Codebook) -> jax.Array:
    """The dynamic map at ``index`` in float32, the same in every compiled program.

    Index ``i`` in ``n .. 2n - 1`` (``n = 2**k``) is decade ``e = bits - 1 - k``:
    ``10**-e * (0.1 + 0.9 * (i - n + 1) / n) = (n + 9 * (i - n + 1)) * 10**-(e+1) / n``,
    an exact integer times a per-decade constant: one rounding, no sum that a
    compiler could contract into a fused multiply-add one way here and another
    there. The decade comes from the float32 exponent of the index, the power of ten
    from selects.
    """
    bits = int(np.log2(len(codebook.magnitudes)))
    i = jnp.maximum(index, 1)
    k = _exponent(i.astype(jnp.float32))  # floor(log2(i)), exact below 2**24
    n = jnp.left_shift(1, k)
    inverse_n = jax.lax.bitcast_convert_type(jnp.left_shift(127 - k, 23), jnp.float32)
    decade = bits - 1 - k
    power = jnp.full(index.shape, np.float32(0.1))
    for e in range(1, bits):
        power = jnp.where(decade == e, np.float32(10.0 ** -(e + 1)), power)
    numerator = (n + 9 * (i - n + 1)).astype(jnp.float32)
    return jnp.where(
        index == 0, np.float32(codebook.magnitudes[0]), numerator * (power * inverse_n)
    )


# -- the encoder of the dynamic maps ---------------------------------------------------
_SPLIT_BITS = 10  # J = J_hi + J_lo with J_lo < 2**10; s_hi keeps 11 significant bits


class _Decades(NamedTuple):
    """Per decade ``k`` of a map (codes ``n .. 2n-1``, ``n = 2**k``), float32 constants.

    Attributes:
      lower: the boundary below code ``n`` (``boundaries()[n - 1]``).
      slope: ``2n * 10**(e+1)``: the midpoint number ``I`` of a value (in the map's domain).
      s_hi: the high 11 bits of the scale ``S`` that gives a boundary from its ``I``.
      s_lo: the rest of ``S``, rounded.
    """

    lower: tuple[np.float32, ...]
    slope: tuple[np.float32, ...]
    s_hi: tuple[np.float32, ...]
    s_lo: tuple[np.float32, ...]


@functools.cache
def _decades(codebook: Codebook) -> _Decades:
    """The decade constants of ``codebook``'s dynamic map.

    In decade ``e`` (``n = 2**(bits-1-e)`` codes), code ``n + k`` stands for
    ``(n + 9(k+1)) * 10**-(e+1) / n``; the boundary ``i`` between codes ``i``
    and ``i+1`` (``n - 1 <= i <= 2n - 2``) is the midpoint
    ``I * 10**-(e+1) / (2n)`` with the integer ``I = 18i - 16n + 27``, squared
    for ``NU``: the boundary is ``J * S`` with ``J = I`` or ``I**2`` (below
    ``2**23``) and ``S = 10**-(e+1) / (2n)`` or its square.
    """
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


def boundary(index: jax.Array, n: jax.Array, s_hi: jax.Array, s_lo: jax.Array, *, squared: bool):
    """Boundary ``index`` of decade ``n``, exactly ``Codebook.boundaries()[index]``.

    ``J * S`` rounded once: ``J_hi * s_hi`` is exact (11 + 13 bits), and the
    small rest ``J_lo * s_hi + J * s_lo`` is added to it, so that the one
    rounding that matters is the last. A test checks every boundary of both
    maps, with and without a fused multiply-add in the rest.
    """
    i = 18 * index - 16 * n + 27
    j = i * i if squared else i
    high = (j & ~((1 << _SPLIT_BITS) - 1)).astype(jnp.float32)
    low = (j & ((1 << _SPLIT_BITS) - 1)).astype(jnp.float32)
    return high * s_hi + (low * s_hi + j.astype(jnp.float32) * s_lo)


def _encode_dynamic(x: jax.Array, codebook: Codebook) -> jax.Array:
    """The nearest codes of a dynamic map, by arithmetic and two exact comparisons.

    The code of ``|x|`` is the number of map boundaries at or below it. The
    decade comes from comparing with its lower boundary (one per decade);
    inside it, the midpoint formula inverted gives a code that is off by at
    most one near a boundary, and two exact comparisons with the boundaries
    around it (:func:`boundary`, computed, not looked up) settle it. Values
    above 1, infinities and NaN get the top code. A test checks it against an
    independent table encoder on every float32 in ``[0, 2)``.
    """
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    magnitude = jax.lax.bitcast_convert_type(bits & np.uint32(0x7FFFFFFF), jnp.float32)
    magnitude = jnp.where(magnitude <= 1, magnitude, np.float32(1))  # > 1 and NaN: the top
    constants = _decades(codebook)
    n = jnp.zeros(x.shape, jnp.int32)
    slope = s_hi = s_lo = jnp.zeros(x.shape, jnp.float32)
    ordered = _ordered(magnitude)
    for k, (lower, *decade) in enumerate(zip(*constants, strict=True)):
        # ``lower``'s bits as a constant: Mosaic TPU has no scalar bitcast
        above = ordered >= np.float32(lower).view(np.int32)
        n = jnp.where(above, 2**k, n)
        slope, s_hi, s_lo = (
            jnp.where(above, c, v) for c, v in zip(decade, (slope, s_hi, s_lo), strict=True)
        )
    domain = jnp.sqrt(magnitude) if codebook.sqrt_domain else magnitude
    estimate = jnp.floor((domain * slope + (16 * n - 27).astype(jnp.float32)) * np.float32(1 / 18))
    code = jnp.clip(estimate.astype(jnp.int32) + 1, n, 2 * n - 1)
    at = functools.partial(boundary, n=n, s_hi=s_hi, s_lo=s_lo, squared=codebook.sqrt_domain)
    code = jnp.where((code > n) & (ordered < _ordered(at(code - 1))), code - 1, code)
    code = jnp.where((code < 2 * n - 1) & (ordered >= _ordered(at(code))), code + 1, code)
    code = jnp.where(n == 0, 0, code)  # below the first boundary
    if codebook.signed:
        code = jnp.where(bits >> 31 == 1, -code, code)
    return code.astype(codebook.code_dtype)


def _exponent(x: jax.Array) -> jax.Array:
    """``floor(log2(x))`` of a positive normal float32, from its exponent bits.

    Not ``31 - clz(i)`` for an integer ``i``: CPUs without AVX-512 have no
    vector count-leading-zeros, and LLVM emulates it element by element.
    """
    return (_ordered(x) >> 23) - 127


def _ordered(x: jax.Array) -> jax.Array:
    """A non-negative float32's bits as int32: the same order as the floats.

    The encoder compares these rather than the floats: with float comparisons
    XLA:CPU splits a cheap encoder in two and writes a float32 value out between
    the parts (seen with a base-8 map, ``benchmarks/base8_map.py``).
    """
    return jax.lax.bitcast_convert_type(x, jnp.int32)


# -- blocks -----------------------------------------------------------------------
def num_blocks(length: int, block_size: int) -> int:
    return max(1, math.ceil(length / block_size))


@functools.partial(jax.jit, static_argnums=1)
def block_absmax(x: jax.Array, n_blocks: int) -> jax.Array:
    """The float32 ``max |x|`` of each block along the last axis: shape ``(..., n_blocks)``.

    Computed on the float32 bit patterns as int32 (for non-negative floats the
    order is the same, and NaN still wins), in stages of at most 32 elements.
    That is the reduction XLA fuses with the elementwise code that produces
    ``x``: so the new state is never written out in float32 just to take its
    maximum (XLA:CPU hands a float max over 256 elements to a library kernel
    that needs its input materialized).
    """
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32) & 0x7FFFFFFF
    bits = _pad_last(bits, n_blocks * math.ceil(x.shape[-1] / n_blocks))
    bits = bits.reshape(*x.shape[:-1], n_blocks, -1)
    while bits.shape[-1] > _STAGE:
        bits = _pad_last(bits, _STAGE * math.ceil(bits.shape[-1] / _STAGE))
        bits = jnp.max(bits.reshape(*bits.shape[:-1], -1, _STAGE), axis=-1)
    return jax.lax.bitcast_convert_type(jnp.max(bits, axis=-1), jnp.float32)


_STAGE = 32  # elements per reduction stage


def _pad_last(x: jax.Array, length: int) -> jax.Array:
    """``x`` padded with zeros to ``length`` along its last axis."""
    pad = length - x.shape[-1]
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)]) if pad else x


def per_element(absmax: jax.Array, length: int) -> jax.Array:
    """Each block's ``absmax`` repeated over its elements: shape ``(..., length)``."""
    block_length = math.ceil(length / absmax.shape[-1])
    n_blocks = absmax.shape[-1]
    spread = jnp.broadcast_to(absmax[..., None], (*absmax.shape, block_length))
    spread = spread.reshape(*absmax.shape[:-1], n_blocks * block_length)
    return spread if n_blocks * block_length == length else spread[..., :length]


def pack(codes: jax.Array) -> jax.Array:
    """4-bit codes ``(..., L)`` as bytes ``(..., ceil(L / 2))``: pairs along the last axis.

    The first code of a pair goes in the low nibble; an odd last code is
    paired with 0.
    """
    nibbles = _pad_last(codes.astype(jnp.uint8) & np.uint8(0xF), 2 * math.ceil(codes.shape[-1] / 2))
    pairs = nibbles.reshape(*codes.shape[:-1], -1, 2) << np.array([0, 4], np.uint8)
    # A sum over the pair (the nibbles do not overlap: it is their OR), not two slices:
    # XLA then computes each code once, where slices made it compute the pair's inputs
    # along two index paths.
    return jnp.sum(pairs, axis=-1, dtype=jnp.uint8)


def unpack(packed: jax.Array, length: int, codebook: Codebook) -> jax.Array:
    """The ``length`` codes (``codebook.code_dtype``) that :func:`pack` stored in ``packed``."""
    # Shifts against a broadcast pair, not a stack: XLA fuses them into the codes'
    # consumers instead of writing the unpacked codes out.
    pairs = (packed[..., None] >> np.array([0, 4], np.uint8)) & np.uint8(0xF)
    codes = pairs.reshape(*packed.shape[:-1], -1)[..., :length]
    if codebook.signed:  # the two's complement nibble: 8..15 stand for -8..-1
        return jnp.where(codes >= 8, codes.astype(jnp.int8) - np.int8(16), codes.astype(jnp.int8))
    return codes


# The codec runs as small jitted functions: traced once per shape and map, not
# once per leaf (a 200-leaf step traced in seconds instead of tens of seconds).
@functools.partial(jax.jit, static_argnums=2)
def encode_blocks(x: jax.Array, absmax: jax.Array, codebook: Codebook) -> jax.Array:
    """``x`` as codes relative to its blocks' ``absmax`` (from :func:`block_absmax`).

    4-bit codes come packed, two per byte (:func:`pack`).
    """
    scale = per_element(absmax, x.shape[-1])
    codes = encode(x.astype(jnp.float32) / jnp.where(scale > 0, scale, 1.0), codebook)
    return pack(codes) if codebook.packed else codes


@functools.partial(jax.jit, static_argnums=(2, 3))
def decode_blocks(
    codes: jax.Array, absmax: jax.Array, codebook: Codebook, length: int | None = None
) -> jax.Array:
    """The float32 values that ``codes`` on blocks of ``absmax`` stand for.

    ``length`` is the last axis of the values: that of ``codes`` unless they
    are packed (then ``2 * codes.shape[-1]`` or one less).
    """
    length = codes.shape[-1] if length is None else length
    if codebook.packed:
        codes = unpack(codes, length, codebook)
    return decode(codes, codebook) * per_element(absmax, length)
