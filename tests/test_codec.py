"""The 8-bit and 4-bit maps and their codec (``optax_rmsprop._quantize``).

The dynamic maps (first moments) are checked against their definition and an
independent table encoder; the ``nu`` grids against a brute-force nearest
search and, rounded stochastically, against the probability each rounding must
have (binomial bounds).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_rmsprop import _quantize, _rounding
from tests.reference_codec import table_encode

F32 = jnp.float32
MAPS = {
    "nu": _quantize.NU,
    "signed": _quantize.SIGNED,
    "nu4": _quantize.NU4,
    "signed4": _quantize.SIGNED4,
}
DYNAMIC_MAPS = ["signed", "signed4"]
GRIDS = ["nu", "nu4"]


def test_the_maps_are_the_dynamic_decades_and_the_nu_grids_have_no_zero():
    # Independently: decade e holds 2**(bits-1-e) values spaced linearly in (1/8, 1] * 8**-e.
    def decades(bits):
        return [
            8.0**-e * (1 / 8 + 7 / 8 * (k + 1) / 2 ** (bits - 1 - e))
            for e in reversed(range(bits))
            for k in range(2 ** (bits - 1 - e))
        ]

    np.testing.assert_allclose(_quantize.SIGNED.magnitudes, [0.0, *decades(7)], rtol=1e-12)
    np.testing.assert_allclose(_quantize.SIGNED4.magnitudes, [0.0, *decades(3)], rtol=1e-12)
    codes = np.arange(-127, 128, dtype=np.int8)  # the sign is its own: -c decodes to -value
    np.testing.assert_array_equal(
        _quantize.decode(jnp.asarray(codes), _quantize.SIGNED),
        np.sign(codes) * _quantize.SIGNED.values()[np.abs(codes)],
    )
    # nu, 8 bits: 16 binades below 1 with 16 values each, less the lowest, and 1 itself
    grid = sorted(2.0**e * (1 + m / 16) for e in range(-16, 0) for m in range(16))
    np.testing.assert_array_equal(_quantize.NU.magnitudes, [*grid[1:], 1.0])
    # nu, 4 bits: the powers of two from 2**-15 to 1
    np.testing.assert_array_equal(_quantize.NU4.magnitudes, 2.0 ** np.arange(-15, 1))
    for codebook in MAPS.values():  # every value decodes exactly, ascending
        np.testing.assert_array_equal(codebook.values(), codebook.magnitudes.astype(np.float32))
        assert np.all(np.diff(codebook.values()) > 0)


@pytest.mark.parametrize("name", ["nu4", "signed4"])
def test_4bit_codes_pack_two_per_byte_and_unpack_exactly(name):
    codebook = MAPS[name]
    low, high = (-7, 8) if codebook.signed else (0, 16)
    for length in (1, 2, 7, 128, 257):
        codes = jax.random.randint(jax.random.key(length), (3, length), low, high)
        codes = codes.astype(codebook.code_dtype)
        packed = _quantize.pack(codes)
        assert packed.shape == (3, (length + 1) // 2) and packed.dtype == jnp.uint8
        first = np.asarray(codes[:, 0]).astype(np.int64) & 0xF  # the first code: low nibble
        np.testing.assert_array_equal(np.asarray(packed[:, 0]) & 0xF, first)
        np.testing.assert_array_equal(_quantize.unpack(packed, length, codebook), codes)


@pytest.mark.xla_contract
def test_unpacking_inside_a_loop_leaves_nothing_for_xla_to_hoist():
    # Shifts by a [0, 4] pattern are hoisted out of jax.lax loops as an argument (u8[2]),
    # and shifts by amounts read from memory are not vectorized.
    packed = jnp.zeros((64, 512), jnp.uint8)

    def body(i, total):
        codes = _quantize.unpack(packed + i.astype(jnp.uint8), 1024, _quantize.SIGNED4)
        return total + codes.astype(jnp.int32)

    loop = jax.jit(lambda t: jax.lax.fori_loop(0, 3, body, t))
    text = loop.lower(jnp.zeros((64, 1024), jnp.int32)).compile().as_text()
    assert "while(" in text
    assert not re.search(r"\b(u8|s8|pred|s32)\[2\]", text), re.findall(r"\S+\[2\]\S*", text)


def _samples(codebook, n: int = 5000) -> np.ndarray:
    rng = np.random.default_rng(0)
    bounds = codebook.boundaries()
    extremes = [0, 1, 1e-45, 1e-30]
    return np.concatenate(
        [rng.random(n), 10 ** rng.uniform(-20, 0, n), codebook.values(), bounds, extremes]
    ).astype(np.float32)


@pytest.mark.parametrize("name", MAPS)
def test_encoding_without_random_bits_picks_the_nearest_map_value(name):
    codebook = MAPS[name]
    v = _samples(codebook)
    got = np.asarray(_quantize.encode(jnp.asarray(v), codebook)).astype(np.int64)
    distance = np.abs(codebook.magnitudes[None, :] - v.astype(np.float64)[:, None])
    nearest = distance[np.arange(len(v)), got] <= distance.min(axis=1)
    # the one exception: within a float32 ulp of a boundary (a tie up to rounding)
    at_boundary = np.min(np.abs(codebook.boundaries()[None, :] - v[:, None]), axis=1)
    at_boundary = at_boundary <= np.spacing(v)
    assert np.all(nearest | at_boundary), v[~(nearest | at_boundary)][:5]
    assert np.mean(at_boundary) < 0.2
    if codebook.signed:  # the sign is its own bit
        negative = np.asarray(_quantize.encode(-jnp.asarray(v), codebook)).astype(np.int64)
        np.testing.assert_array_equal(negative, -got)


@pytest.mark.parametrize("name", GRIDS)
def test_stochastic_rounding_picks_a_neighbour_with_the_right_probability(name):
    # Each value rounds to the grid value below or above it, up with probability
    # (x - lo) / (hi - lo) (NU4: log2(x / lo)); 4,096 draws per value, 6 sigma bounds.
    codebook = MAPS[name]
    grid = codebook.magnitudes
    x = np.concatenate([np.random.default_rng(1).uniform(grid[0], 1, 300), grid[:40]])
    x = np.sort(x.astype(np.float32)).astype(np.float64)
    draws = 4096
    random = _rounding.random_bits((len(x), draws), _rounding.stream_seed(jnp.int32(7), 3))
    xs = jnp.broadcast_to(jnp.asarray(x, F32)[:, None], (len(x), draws))
    got = np.asarray(_quantize.decode(_quantize.encode(xs, codebook, random), codebook), np.float64)
    below = np.searchsorted(grid, x, side="right") - 1
    lo, hi = grid[below], grid[np.minimum(below + 1, len(grid) - 1)]
    assert np.all((got == lo[:, None]) | (got == hi[:, None]))
    p = np.log2(x / lo) if codebook.log_rounding else (x - lo) / np.where(hi > lo, hi - lo, 1)
    p = np.where(hi > lo, p, 0.0)
    ups = np.where(hi > lo, np.mean(got == hi[:, None], axis=1), 0.0)  # 1 is the top
    assert np.all(np.abs(ups - p) <= 6 * np.sqrt(p * (1 - p) / draws) + 1e-3)
    if not codebook.log_rounding:  # unbiased: the mean stored value is the value
        np.testing.assert_allclose(got.mean(axis=1), x, rtol=6 * 2**-4 / np.sqrt(draws))


def test_random_bits_are_uniform_deterministic_and_differ_by_step_and_stream():
    seed = _rounding.stream_seed(jnp.int32(5), 0)
    bits = np.asarray(_rounding.random_bits((64, 1024), seed))
    np.testing.assert_array_equal(bits, _rounding.random_bits((64, 1024), seed))
    counts = np.bincount((bits >> 24).ravel(), minlength=256)  # chi-square, 255 dof
    expected = bits.size / 256
    assert np.sum((counts - expected) ** 2 / expected) < 255 + 6 * np.sqrt(2 * 255)
    for other in (_rounding.stream_seed(jnp.int32(6), 0), _rounding.stream_seed(jnp.int32(5), 1)):
        same = np.asarray(_rounding.random_bits((64, 1024), other)) == bits
        assert np.mean(same) < 1e-3


@pytest.mark.parametrize("dtype,smallest", [(jnp.bfloat16, 1e-30), (jnp.float16, 2.0**-24)])
def test_stochastic_cast_rounds_to_a_neighbour_and_is_unbiased(dtype, smallest):
    # down to float16's smallest subnormal, where fewer bits are kept
    x = 10 ** np.random.default_rng(2).uniform(np.log10(smallest), 0, 300)
    x = jnp.asarray(np.concatenate([x, np.random.default_rng(2).uniform(1e-3, 1, 100)]), F32)
    draws = 4096
    random = _rounding.random_bits((400, draws), _rounding.stream_seed(jnp.int32(1), 0))
    xs = jnp.broadcast_to(x[:, None], (400, draws))
    got = _rounding.stochastic_cast(xs, dtype, random)
    assert got.dtype == dtype
    down = jnp.nextafter(x.astype(dtype), jnp.asarray(0, dtype))
    near, up = x.astype(dtype), jnp.nextafter(x.astype(dtype), jnp.asarray(2, dtype))
    allowed = (got == down[:, None]) | (got == near[:, None]) | (got == up[:, None])
    assert bool(jnp.all(allowed))
    ulp = np.asarray(up.astype(F32) - near.astype(F32))
    mean = np.asarray(got.astype(F32)).mean(axis=1)
    assert np.all(np.abs(mean - np.asarray(x)) <= 6 * ulp / np.sqrt(draws))


# -- the dynamic maps' encoder against an independent table encoder --------------------
def _near_boundaries(codebook) -> np.ndarray:
    """Every boundary and its two float32 neighbours on each side."""
    b = codebook.boundaries()
    out, down, up = [b], b, b
    for _ in range(2):
        down, up = np.nextafter(down, np.float32(0)), np.nextafter(up, np.float32(2))
        out += [down, up]
    return np.concatenate(out)


@pytest.mark.parametrize("name", DYNAMIC_MAPS)
def test_every_boundary_is_computed_exactly(name):
    # The midpoints in float64, against the encoder's integer-times-power-of-two formula.
    codebook = MAPS[name]
    index = jnp.arange(len(codebook.magnitudes) - 1)
    got = jax.jit(_quantize.boundary, static_argnums=1)(index, codebook)
    np.testing.assert_array_equal(got, codebook.boundaries())
    m = codebook.magnitudes
    np.testing.assert_array_equal(np.asarray(got, np.float64), (m[1:] + m[:-1]) / 2)


@pytest.mark.parametrize("name", DYNAMIC_MAPS)
def test_the_encoder_gives_the_table_encoders_codes(name):
    codebook = MAPS[name]
    rng = np.random.default_rng(0)
    v = np.concatenate(
        [
            _near_boundaries(codebook),
            rng.random(1_000_000, dtype=np.float32),
            10 ** rng.uniform(-45, 0.3, 2_000_000),
            codebook.values(),
            [0, 1, 1.5, 3e38, 1e-45, np.nan],
        ]
    ).astype(np.float32)
    v = np.concatenate([v, -v])
    table = jax.jit(table_encode, static_argnums=1)(jnp.asarray(v), codebook)
    arithmetic = jax.jit(_quantize.encode, static_argnums=1)(jnp.asarray(v), codebook)
    np.testing.assert_array_equal(arithmetic, table)


@pytest.mark.slow
def test_the_encoder_gives_the_table_encoders_codes_for_every_float_below_2():
    chunk = 1 << 24  # 2**30 floats: every float32 in [0, 2)

    @jax.jit
    def mismatches(start):
        x = jax.lax.bitcast_convert_type(start + jnp.arange(chunk, dtype=jnp.uint32), F32)
        pairs = [(x, _quantize.SIGNED), (-x, _quantize.SIGNED)]
        return sum(jnp.sum(table_encode(v, c) != _quantize.encode(v, c)) for v, c in pairs)

    total = sum(int(mismatches(np.uint32(s))) for s in range(0, 0x40000000, chunk))
    assert total == 0


# -- blocks ---------------------------------------------------------------------------
# The dynamic maps: the widest gap between neighbours in the top range, and where it starts.
TOP_GAPS = {"signed": (7 / 8 / 64, 1 / 8), "signed4": (7 / 32, 1 / 8)}


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("shape", [(4097,), (3, 1001), (2, 3, 256)])
def test_round_trip_error_is_half_a_map_step(name, shape):
    codebook = MAPS[name]
    x = jax.random.normal(jax.random.key(1), shape, F32)
    x = x if codebook.signed else x**2
    n_blocks = _quantize.num_blocks(shape[-1], 256)
    absmax = _quantize.block_absmax(x, n_blocks)
    codes = _quantize.encode_blocks(x, absmax, codebook)
    stored = (*shape[:-1], (shape[-1] + 1) // 2) if codebook.packed else shape
    assert codes.shape == stored and codes.dtype == codebook.storage_dtype
    assert absmax.shape == (*shape[:-1], n_blocks)
    back = np.asarray(_quantize.decode_blocks(codes, absmax, codebook, shape[-1]), np.float64)
    scale = np.asarray(_quantize.per_element(absmax, shape[-1]), np.float64)
    np.testing.assert_array_equal(scale.max(axis=-1), np.abs(np.asarray(x)).max(axis=-1))
    x = np.asarray(x, np.float64)
    if codebook.grid:  # the same relative error at every scale above the grid's floor
        above = x >= codebook.magnitudes[0] * scale
        relative = np.abs(back - x)[above] / x[above]
        assert np.all(relative <= 2.0 ** -(codebook.mantissa_bits + 1) * (1 + 1e-5))
    else:  # values in the map's top range round to within half its widest gap there
        gap, top_start = TOP_GAPS[name]
        top = np.abs(x) > top_start * scale
        assert np.all((np.abs(back - x) / scale)[top] <= gap / 2 * (1 + 1e-5))
    exact = np.abs(x) == scale  # each block's absmax is stored exactly
    np.testing.assert_array_equal(back[exact], x[exact])


@pytest.mark.parametrize("random", [False, True], ids=["nearest", "stochastic"])
def test_zeros_and_absmax_are_exact_and_an_all_zero_block_is_zero(random):
    x = jnp.zeros((2, 512)).at[0, :256].set(jnp.linspace(0, 3, 256))
    absmax = _quantize.block_absmax(x, 2)
    seed = _rounding.stream_seed(jnp.int32(0), 0) if random else None
    for codebook in MAPS.values():
        codes = _quantize.encode_blocks(x, absmax, codebook, None if codebook.signed else seed)
        back = _quantize.decode_blocks(codes, absmax, codebook, 512)
        assert back[0, 255] == 3 and not jnp.any(back[1]) and not jnp.any(back[0, 256:])
        if codebook.signed:
            assert back[0, 0] == 0
        else:  # no zero: a zero beside larger values is the grid's floor times absmax
            assert float(back[0, 0]) == float(np.float32(codebook.magnitudes[0] * 3))
            assert float(jnp.min(back[0, :256])) == float(back[0, 0]) > 0
