"""Block-wise 8-bit and 4-bit quantization: the maps and their codecs.

An array is cut into blocks along its last axis; each block keeps one float32
``absmax`` and one 8-bit (or 4-bit) code per element. A code indexes a *map*
of values relative to the block's absmax:

* ``SIGNED`` (first moments ``mu`` and the momentum buffer): the dynamic map
  of Dettmers et al. (2022) over ``[-1, 1]``, in base 8: a sign and 7 bits of
  magnitude, with ``2**(6-e)`` linearly spaced magnitudes in decade ``e``
  (values in ``(8**-(e+1), 8**-e]``, down to ``2**-18``), and an exact 0.
  Base 8 rather than Dettmers et al.'s base 10 makes every value and boundary
  an integer times a power of two: the codec is a few integer operations, with
  no per-decade constants.
* ``NU`` (the second moment ``nu >= 0``, 8 bits) and ``NU4`` (4 bits): a
  binary floating-point grid over ``nu / absmax``, *without zero*. Code ``c``
  is grid point ``n = c + 1``, ``2**e * (1 + m / 2**M)`` with ``n = (e + B) *
  2**M + m``: 16 binades (``B = 16``) of 16 values each (``M = 4``) for
  ``NU``, 16 powers of two (``M = 0``, ``B = 15``) for ``NU4``; the top code
  is 1 (the block's absmax, exactly) and code 0 the grid's floor, ``2**-16 *
  17/16`` or ``2**-15``. Every value has the same *relative* resolution (the
  step, ``1 / sqrt(nu)``, needs that: a small ``nu`` beside a large one in its
  block is stored as finely as the large one), and the codec is the float32
  bit pattern shifted. A small ``nu`` is never stored as 0 while its block
  holds larger values (the zero-point failure of Li et al., 2023: the next
  step would divide by ``sqrt((1 - decay) * g**2)`` alone); a block whose
  absmax is 0 stays exactly 0.
* ``SIGNED4`` (first moments in 4 bits): the base-8 dynamic map with a sign and
  3 bits of magnitude, ``0, 1/64, 9/128, 1/8, 11/32, 9/16, 25/32, 1``.

4-bit codes are stored two per byte along the last axis (:func:`pack`), the
first of each pair in the low nibble; a signed code as its two's complement
nibble.

``nu`` is written with *stochastic rounding* (:func:`encode` with random
bits): it rounds to one of the two grid values around it, up with the
probability that makes the expected stored value the value itself (``NU``;
``NU4`` takes the probability in ``log(nu)``, which keeps a stored value from
wandering far below the true one between powers of two). Rounded to nearest,
a moving average whose move is under half a grid step never moves, and
``nu`` ratchets up. The signed maps round to nearest.

The codec has no table, so it fuses into XLA's loops and shards like its
input. ``SIGNED`` decodes by integer arithmetic and one multiplication by a
power of two, and encodes by taking the decade from the binary exponent,
inverting the decade's midpoint formula and settling the code with one exact
comparison against the boundary above it; ``SIGNED4``'s 8 magnitudes decode
by a chain of selects and encode by counting the 7 boundaries at or below the
value. The ``nu`` grids are the float32 bit pattern, plus the rounding bits,
shifted.

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

import jax
import jax.numpy as jnp
import numpy as np

from optax_rmsprop import _rounding


def dynamic_magnitudes(bits: int) -> np.ndarray:
    """The dynamic map's ``2**bits`` magnitudes in ``[0, 1]``, ascending, in float64.

    Index 0 is 0; indices ``n .. 2n - 1`` (``n = 2**k``) are decade ``e = bits -
    1 - k``, ``n`` values spaced linearly in ``(8**-(e+1), 8**-e]``: index ``c``
    stands for ``(7c - 6n + 7) * 2**(2k - 3 bits)``.
    """
    values = [0.0]
    for k in range(bits):
        n = 2**k
        values += [(7 * c - 6 * n + 7) * 2.0 ** (2 * k - 3 * bits) for c in range(n, 2 * n)]
    return np.asarray(values)


def grid_magnitudes(bits: int, mantissa_bits: int) -> np.ndarray:
    """The ``nu`` grid's ``2**bits`` values in ``(0, 1]``, ascending, in float64.

    Code ``c`` is grid point ``n = c + 1 = (e + B) * 2**M + m``, the value
    ``2**e * (1 + m / 2**M)``, with ``M = mantissa_bits`` and ``B = 2**(bits - M)``
    binades: the top code is 1, and there is no zero.
    """
    n = np.arange(1, 2**bits + 1)
    binades = 2 ** (bits - mantissa_bits)
    e = (n >> mantissa_bits) - binades
    m = n & (2**mantissa_bits - 1)
    return 2.0**e * (1 + m / 2.0**mantissa_bits)


@dataclasses.dataclass(frozen=True, eq=False)
class Codebook:
    """A map from 8-bit or 4-bit codes to values relative to the block's absmax.

    Attributes:
      name: ``"nu"``, ``"signed"``, ``"nu4"`` or ``"signed4"``, for messages.
      signed: codes are ``int8`` (sign and magnitude) rather than ``uint8``.
      magnitudes: the map's magnitudes, ascending (float64).
      bits: the code width, 8 or 4 (stored two codes per byte).
      mantissa_bits: for the ``nu`` grids, ``M`` (:func:`grid_magnitudes`);
        None for the dynamic maps.
      log_rounding: stochastic rounding takes its probability in
        ``log(value)`` rather than in the value (``NU4``).
    """

    name: str
    signed: bool
    magnitudes: np.ndarray
    bits: int = 8
    mantissa_bits: int | None = None
    log_rounding: bool = False

    @property
    def grid(self) -> bool:
        """A binary floating-point grid (the ``nu`` maps) rather than a dynamic map."""
        return self.mantissa_bits is not None

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
        return ((m[1:] + m[:-1]) / 2).astype(np.float32)


NU = Codebook("nu", signed=False, magnitudes=grid_magnitudes(8, 4), mantissa_bits=4)
SIGNED = Codebook("signed", signed=True, magnitudes=dynamic_magnitudes(7))
NU4 = Codebook(
    "nu4",
    signed=False,
    magnitudes=grid_magnitudes(4, 0),
    bits=4,
    mantissa_bits=0,
    log_rounding=True,
)
SIGNED4 = Codebook("signed4", signed=True, magnitudes=dynamic_magnitudes(3), bits=4)


def encode(x: jax.Array, codebook: Codebook, random: jax.Array | None = None) -> jax.Array:
    """The codes of ``x`` (float32 in ``[-1, 1]``, ``[0, 1]`` for nu).

    ``random`` (uint32, ``x``'s shape) rounds a ``nu`` grid stochastically
    (:func:`_grid_codes`); without it, and on the signed maps, the code is the
    nearest map value's. No table: integer arithmetic and exact comparisons, so it fuses and shards
    everywhere and every program gives the same codes.
    Values above 1, infinities and NaN get the top code.
    """
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    magnitude = jax.lax.bitcast_convert_type(bits & np.uint32(0x7FFFFFFF), jnp.float32)
    magnitude = jnp.where(magnitude <= 1, magnitude, np.float32(1))  # > 1 and NaN: the top
    if codebook.grid:
        return _grid_codes(magnitude, codebook, random)
    code = _counted(magnitude, codebook) if codebook.packed else _nearest(magnitude, codebook)
    if codebook.signed:
        code = jnp.where(bits >> 31 == 1, -code, code)
    return code.astype(codebook.code_dtype)


def decode(codes: jax.Array, codebook: Codebook) -> jax.Array:
    """The map values (relative to absmax, float32) that ``codes`` stand for.

    Integer and select operations, no table: XLA then fuses the decoding into
    every consumer, and never writes the decoded state out in float32. It
    gives exactly :meth:`Codebook.values` (a test checks every code).
    """
    index = codes.astype(jnp.int32)
    if codebook.grid:
        return _grid_value(index, codebook)
    if codebook.packed:  # 8 magnitudes: a select chain is cheaper than the arithmetic
        magnitude = _selected_magnitude(jnp.abs(index), codebook)
    else:
        magnitude = _dynamic_magnitude(jnp.abs(index), codebook)
    return jnp.where(index < 0, -magnitude, magnitude) if codebook.signed else magnitude


# -- the nu grids' codec: the float32 bit pattern, shifted -----------------------------
def _binades(codebook: Codebook) -> int:
    return 2 ** (codebook.bits - codebook.mantissa_bits)


def _grid_value(code: jax.Array, codebook: Codebook) -> jax.Array:
    """Grid point ``n = code + 1`` as float32: its exponent and mantissa bits, exactly."""
    m_bits = codebook.mantissa_bits
    n = code + 1
    exponent = (n >> m_bits) + (127 - _binades(codebook))
    bits = exponent << 23
    if m_bits:  # else no mantissa: an OR with a 0 XLA would have to fold
        bits = bits | ((n & (2**m_bits - 1)) << (23 - m_bits))
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _grid_codes(magnitude: jax.Array, codebook: Codebook, random: jax.Array | None) -> jax.Array:
    """The grid codes of ``magnitude`` in ``[0, 1]``: nearest, or stochastically rounded.

    Between two grid values ``lo <= x < hi`` the code rounds up with
    probability ``(x - lo) / (hi - lo)`` (the stored value is ``x`` in
    expectation): ``random`` added below the kept mantissa bits carries into
    them exactly that often. ``log_rounding`` uses ``log2(x / lo)`` instead
    (``hi = 2 lo``): right in expectation in ``log(nu)``. Below the floor:
    code 0 (the grid has no zero).
    """
    m_bits = codebook.mantissa_bits
    bits = jax.lax.bitcast_convert_type(magnitude, jnp.int32)
    if codebook.log_rounding and random is not None:  # a power-of-two grid: m_bits == 0
        fraction = jax.lax.bitcast_convert_type((bits & 0x7FFFFF) | 0x3F800000, jnp.float32)
        p = jnp.log2(fraction)
        up = _uniform(random) < p
        code = (bits >> 23) + up.astype(jnp.int32) + (_binades(codebook) - 128)
    else:  # nearest: half of the dropped bits' range; ties up, as the boundaries say
        carry = 1 << (22 - m_bits) if random is None else random >> (9 + m_bits)
        bits = bits + jnp.asarray(carry).astype(jnp.int32)
        code = (bits >> (23 - m_bits)) - (((127 - _binades(codebook)) << m_bits) + 1)
    top = 2**codebook.bits - 1
    return jnp.clip(code, 0, top).astype(codebook.code_dtype)


def _uniform(random: jax.Array) -> jax.Array:
    """Uniform float32 in ``[0, 1)`` from the top 24 of ``random``'s bits."""
    return (random >> 8).astype(jnp.int32).astype(jnp.float32) * np.float32(2**-24)


def _selected_magnitude(index: jax.Array, codebook: Codebook) -> jax.Array:
    """The magnitude at ``index`` by a chain of selects over the map's float32 magnitudes."""
    magnitude = jnp.zeros(index.shape, jnp.float32)
    for i, m in enumerate(codebook.magnitudes.astype(np.float32)):
        magnitude = jnp.where(index == i, m, magnitude) if m else magnitude
    return magnitude


# -- the dynamic maps' codec: integers times powers of two, exact in float32 -----------


def _code_bits(codebook: Codebook) -> int:
    return int(np.log2(len(codebook.magnitudes)))


def _power_of_two(exponent: jax.Array, offset: int = 0) -> jax.Array:
    """``2.0**(exponent + offset)`` in float32, exactly (int32, in the normal range).

    The constants are summed here, in Python: each constant XLA has to fold costs
    every leaf a round of its simplification passes.
    """
    return jax.lax.bitcast_convert_type((exponent + (offset + 127)) << 23, jnp.float32)


def _decade(c: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(k, n = 2**k)`` with ``n <= c < 2n``, for int32 ``1 <= c < 2**24``."""
    k = _exponent(c.astype(jnp.float32))
    return k, jnp.left_shift(1, k)


def _dynamic_magnitude(index: jax.Array, codebook: Codebook) -> jax.Array:
    """Magnitude ``index`` of a dynamic map, ``(7c - 6n + 7) * 2**(2k - 3 bits)`` (0 at 0)."""
    bits = _code_bits(codebook)
    k, n = _decade(jnp.maximum(index, 1))
    magnitude = (7 * index - 6 * n + 7).astype(jnp.float32) * _power_of_two(2 * k, -3 * bits)
    return jnp.where(index == 0, 0, magnitude)


def boundary(c: jax.Array, codebook: Codebook) -> jax.Array:
    """The boundary between codes ``c`` and ``c + 1``: ``Codebook.boundaries()[c]``, exactly.

    The midpoint of the two magnitudes is ``I * 2**(2k - 3 bits - 1)`` with the
    integer ``I = 14c - 12n + 21`` (``n = 2**k`` the decade of ``c + 1``), below
    ``2**24``, so exact in float32; the first boundary is half the first
    magnitude (``I = 8``).
    """
    bits = _code_bits(codebook)
    k, n = _decade(c + 1)
    i = jnp.where(c == 0, 8, 14 * c - 12 * n + 21)
    return i.astype(jnp.float32) * _power_of_two(2 * k, -3 * bits - 1)


# The midpoint formula's estimate is biased down by 0.01 code, more than its float32
# error (about 1e-4 code), so that it is the code or the one below, never above.
_BIAS = np.float32(7 * 0.01)


def _nearest(magnitude: jax.Array, codebook: Codebook) -> jax.Array:
    """The code of the dynamic map's magnitude nearest ``magnitude`` (in ``[0, 1]``), as int32.

    The decade comes from the binary exponent: decade ``e`` spans three. Inverting the midpoint
    formula gives the code, or the one below it; one exact comparison with the
    boundary above settles it.
    """
    bits = _code_bits(codebook)
    top = 2**bits - 1
    y = magnitude
    # floor(x / 3) for x in [0, 3 bits) as (11 x) >> 5, no integer division (which
    # XLA deems expensive: it then splits the encoder and writes a float32 value out)
    k = (jnp.clip(_exponent(y, 3 * bits), 0, 3 * bits - 1) * 11) >> 5
    n = jnp.left_shift(1, k)
    # y = (7c - 6n + 7) * 2**(2k - 3 bits), inverted; the nearest c rounds at c + 1/2
    t = y * _power_of_two(-2 * k, 3 * bits) + (6 * n).astype(jnp.float32) - (3.5 + _BIAS)
    c = jnp.clip(jnp.floor(t * np.float32(1 / 7)).astype(jnp.int32), 0, top)
    above = _ordered(magnitude) >= _ordered(boundary(jnp.minimum(c, top - 1), codebook))
    return jnp.where((c < top) & above, c + 1, c)


def _counted(magnitude: jax.Array, codebook: Codebook) -> jax.Array:
    """The code of the 4-bit map's magnitude nearest ``magnitude``, as int32: how many
    of its 7 boundaries lie at or below it (fewer operations than :func:`_nearest`)."""
    ordered = _ordered(magnitude)
    first, *rest = (ordered >= bound for bound in codebook.boundaries().view(np.int32))
    return sum((above.astype(jnp.int32) for above in rest), first.astype(jnp.int32))


def _exponent(x: jax.Array, offset: int = 0) -> jax.Array:
    """``floor(log2(x)) + offset`` of a positive normal float32, from its exponent bits.

    Not ``31 - clz(i)`` for an integer ``i``: CPUs without AVX-512 have no
    vector count-leading-zeros, and LLVM emulates it element by element.
    (Zero and subnormals give ``offset - 127``.)
    """
    return (_ordered(x) >> 23) + (offset - 127)


def _ordered(x: jax.Array) -> jax.Array:
    """A non-negative float32's bits as int32: the same order as the floats.

    The encoder compares these rather than the floats: with float comparisons
    XLA:CPU splits the encoder in two and writes a float32 value out between
    the parts.
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
    # the shifts 0, 4 as XLA itself rewrites that constant: an iota times 4
    pairs = nibbles.reshape(*codes.shape[:-1], -1, 2) << jax.lax.iota(jnp.uint8, 2) * np.uint8(4)
    # the pair's OR as a sum: slices would make XLA compute each pair's inputs twice
    return jnp.sum(pairs, axis=-1, dtype=jnp.uint8)


def unpack(packed: jax.Array, length: int, codebook: Codebook) -> jax.Array:
    """The ``length`` codes (``codebook.code_dtype``) that :func:`pack` stored in ``packed``."""
    return _unpairs(unpack_pairs(packed, codebook), length)


def unpack_pairs(packed: jax.Array, codebook: Codebook) -> jax.Array:
    """:func:`unpack`'s codes as pairs, ``(..., ceil(L / 2), 2)``: the low nibble first."""
    # a uint16 of the two nibbles read as two bytes: no shift pattern to hoist out of loops
    wide = packed.astype(jnp.uint16)
    spread = (wide & np.uint16(0x0F)) | ((wide & np.uint16(0xF0)) << np.uint16(4))
    pairs = jax.lax.bitcast_convert_type(spread, jnp.uint8)
    if codebook.signed:  # the two's complement nibble: 8..15 stand for -8..-1
        return jnp.where(pairs >= 8, pairs.astype(jnp.int8) - np.int8(16), pairs.astype(jnp.int8))
    return pairs


def _unpairs(pairs: jax.Array, length: int) -> jax.Array:
    """Pairs ``(..., ceil(L / 2), 2)`` as the ``length`` elements they hold along the last axis."""
    return pairs.reshape(*pairs.shape[:-2], -1)[..., :length]


# Small jitted functions: traced once per shape and map, not once per leaf.
@functools.partial(jax.jit, static_argnums=2)
def encode_blocks(
    x: jax.Array, absmax: jax.Array, codebook: Codebook, seed: jax.Array | None = None
) -> jax.Array:
    """``x`` as codes relative to its blocks' ``absmax`` (from :func:`block_absmax`).

    With ``seed`` (:func:`optax_rmsprop._rounding.stream_seed`), a ``nu`` grid
    rounds stochastically. 4-bit codes come packed, two per byte (:func:`pack`).
    """
    scale = per_element(absmax, x.shape[-1])
    random = None if seed is None else _rounding.random_bits(x.shape, seed)
    codes = encode(x.astype(jnp.float32) / jnp.where(scale > 0, scale, 1.0), codebook, random)
    return pack(codes) if codebook.packed else codes


@functools.partial(jax.jit, static_argnums=(2, 3))
def decode_blocks(
    codes: jax.Array, absmax: jax.Array, codebook: Codebook, length: int | None = None
) -> jax.Array:
    """The float32 values that ``codes`` on blocks of ``absmax`` stand for.

    ``length`` is the last axis of the values: that of ``codes`` unless they
    are packed (then ``2 * codes.shape[-1]`` or one less).
    """
    if not codebook.packed:
        return decode(codes, codebook) * per_element(absmax, codes.shape[-1])
    # decoded as pairs, then laid out: XLA's reshape mover would otherwise sink the
    # layout's reshape through the decoder one operation per simplification round
    values = _unpairs(decode(unpack_pairs(codes, codebook), codebook), length)
    return values * per_element(absmax, length)
