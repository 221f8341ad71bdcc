"""8-bit and 4-bit optimizer state (``state_dtype="int8"`` and ``"int4"``).

The state's layout, its accuracy and its plumbing (the codec: ``test_codec.py``;
what XLA makes of the step: ``test_xla_contracts.py``). Accuracy is measured against
the same optimizer with float32 state on the same gradients, per step with the
reference re-synced to the quantized run (as bitsandbytes tests its 8-bit
optimizers) and, unlike bitsandbytes, as the drift of 1,000 steps without
re-syncing.
"""

from __future__ import annotations

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop
from optax_rmsprop import _quantize, _state, _storage
from tests.helpers import jitted_step, update_and_apply

F32 = jnp.float32


STATES = ["int8", "int4"]


# -- what the state looks like ------------------------------------------------------
PARAMS = {
    "w": jnp.ones((64, 256), F32),  # 16,384 elements: quantized
    "v": jnp.ones((7, 1000), F32),  # last axis not a multiple of 256: 4 blocks of 250
    "b": jnp.ones((256,), F32),  # under 4,096: float32
    "s": jnp.ones((), F32),
}


def test_large_leaves_are_quantized_and_small_ones_stay_float32():
    tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, centered=True, state_dtype="int8")
    state = tx.init(PARAMS)
    buffers = [
        (state.rms.nu, state.rms.nu_absmax, jnp.uint8),
        (state.rms.mu, state.rms.mu_absmax, jnp.int8),
        (state.momentum, state.momentum_absmax, jnp.int8),
    ]
    for values, absmax, codes in buffers:
        for k in ("w", "v"):  # codes shaped like the param, one absmax per block
            assert values[k].dtype == codes and values[k].shape == PARAMS[k].shape
            assert absmax[k].dtype == F32
        assert absmax["w"].shape == (64, 1) and absmax["v"].shape == (7, 4)
        for k in ("b", "s"):  # small leaves: float32, a scalar 0 for absmax
            assert values[k].dtype == F32 and values[k].shape == PARAMS[k].shape
            assert absmax[k].shape == ()
    small = optax_rmsprop.rmsprop(1e-2, state_dtype="int8", min_quantized_size=100)
    assert small.init(PARAMS).rms.nu["b"].dtype == jnp.uint8


def test_int4_codes_go_two_per_byte_beside_a_marked_absmax():
    tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, centered=True, state_dtype="int4")
    state = tx.init(PARAMS)
    buffers = [
        (state.rms.nu, state.rms.nu_absmax),
        (state.rms.mu, state.rms.mu_absmax),
        (state.momentum, state.momentum_absmax),
    ]
    for values, absmax in buffers:  # blocks of 128; the unit axis marks 4-bit codes
        assert values["w"].shape == (64, 128) and values["w"].dtype == jnp.uint8
        assert values["v"].shape == (7, 500) and absmax["v"].shape == (7, 8, 1)
        assert absmax["w"].shape == (64, 2, 1) and absmax["w"].dtype == F32
        assert values["b"].dtype == F32 and absmax["b"].shape == ()
    odd = optax_rmsprop.rmsprop(1e-2, state_dtype="int4").init(jnp.ones((5, 1001)))
    assert odd.rms.nu.shape == (5, 501) and odd.rms.nu_absmax.shape == (5, 8, 1)


def test_every_state_leaf_is_an_array_at_its_parameter():
    # nnx.Optimizer, optax.tree.map_params and checkpointers see the state as a
    # tree of plain arrays; the codes sit where float32 state would.
    tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, state_dtype="int8")
    state = tx.init(PARAMS)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
    assert jax.tree.structure(state.rms.nu) == jax.tree.structure(PARAMS)
    assert jax.tree.structure(state.momentum) == jax.tree.structure(PARAMS)


@pytest.mark.parametrize("state_dtype", STATES)
def test_the_layout_read_back_from_a_state_is_the_one_it_was_created_with(state_dtype):
    # dequantize_state and effective_step_size hold a state but no optimizer:
    # they read each buffer's layout from its arrays (and, for 4-bit codes, the
    # params' last axes), which must agree with the layout the optimizer fixed.
    params = {**PARAMS, "c": jnp.ones((4, 2049), jnp.complex64), "d": jnp.ones((8, 513), F32)}
    tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, centered=True, state_dtype=state_dtype)
    state = tx.init(params)
    precision = _storage.StatePrecision.from_args(state_dtype)
    buffers = [
        (state.rms.nu, state.rms.nu_absmax, True),
        (state.rms.mu, state.rms.mu_absmax, False),
        (state.momentum, state.momentum_absmax, False),
    ]
    for values, absmax, real in buffers:
        created = _storage.encodings(params, precision, real=real)
        read_back = _storage.stored_encodings(values, absmax, params, real=real, length_known=True)
        assert created == read_back
        if state_dtype == "int8":  # 8-bit codes say it all: nu gives each rank
            read_back = _storage.stored_encodings(
                values, absmax, state.rms.nu, real=real, length_known=False
            )
            assert created == read_back
    assert created["c"].complex and created["w"].quantized and not created["b"].quantized


# Bytes per parameter of a quantized buffer by last-axis length (codes and one float32
# absmax per block), where it saves memory; None: kept in float32 (4 bytes).
SHORT_ROWS = {"int8": {1: None, 2: 3.0, 8: 1.5}, "int4": {1: None, 2: 2.5, 8: 1.0}}


@pytest.mark.parametrize("state_dtype", STATES)
def test_no_leaf_takes_more_bytes_quantized_than_in_float32(state_dtype):
    # Blocks run along the last axis: each row pays a float32 absmax, which short
    # rows cannot repay. Such leaves keep float32 state and step exactly as float32.
    lengths = [1, 2, 3, 5, 8, 9, 100, 127, 128, 129, 255, 256, 257]
    params = {f"l{n}": jnp.ones((-(-8192 // n), n), F32) for n in lengths}
    tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, state_dtype=state_dtype)
    state = tx.init(params)
    for n in lengths:
        key, size = f"l{n}", params[f"l{n}"].size
        for values, absmax in (
            (state.rms.nu, state.rms.nu_absmax),
            (state.momentum, state.momentum_absmax),
        ):
            stored = values[key].nbytes + absmax[key].nbytes
            assert stored <= 4 * size + 4, (n, stored / size)  # 4: a float leaf's placeholder
            want = SHORT_ROWS[state_dtype].get(n, "any")
            if want is None:
                assert values[key].dtype == F32 and absmax[key].shape == ()
            elif want != "any":
                assert stored / size == pytest.approx(want, abs=1e-3), (n, stored / size)
    grads = jax.tree.map(lambda p: 0.01 * p, params)
    updates, _ = tx.update(grads, state, params)
    full = optax_rmsprop.rmsprop(1e-2, momentum=0.9)
    want, _ = full.update(grads, full.init(params), params)
    np.testing.assert_array_equal(updates["l1"], want["l1"])


def test_a_state_storing_codes_where_this_optimizer_stores_floats_is_refused():
    # 0.3.0 stored (N, 1) leaves as codes; read as float32 they would mean other values.
    params = {"col": jnp.ones((8192, 1), F32)}
    tx = optax_rmsprop.rmsprop(1e-2, state_dtype="int8")
    state = tx.init(params)
    old_nu = {"col": jnp.full((8192, 1), 255, jnp.uint8)}
    old = state._replace(rms=state.rms._replace(nu=old_nu))
    with pytest.raises(ValueError, match=r"leaf \['col'\] holds uint8 values .* float32"):
        tx.update(params, old, params)


NU_BYTES = {"int8": 1.02, "int4": 0.54}  # per parameter, absmax included


@pytest.mark.parametrize("state_dtype", STATES)
@pytest.mark.parametrize("shape", [(1024, 4097), (4096, 4096)])
def test_nu_costs_at_most_its_bytes_per_parameter(shape, state_dtype):
    params = jax.ShapeDtypeStruct(shape, F32)
    tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, state_dtype=state_dtype)
    state = jax.eval_shape(tx.init, params)
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.rms))
    assert nbytes / np.prod(shape) <= NU_BYTES[state_dtype]
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))  # with momentum
    assert nbytes / np.prod(shape) <= 2 * NU_BYTES[state_dtype]


@pytest.mark.parametrize("state_dtype", STATES)
@pytest.mark.parametrize("fill", [0.0, 1.0, 0.37])
def test_initial_scale_is_stored_exactly(fill, state_dtype):
    tx = optax_rmsprop.rmsprop(1e-2, initial_scale=fill, momentum=0.9, state_dtype=state_dtype)
    state = optax_rmsprop.dequantize_state(tx.init(PARAMS), PARAMS)
    np.testing.assert_array_equal(state.rms.nu["w"], np.full((64, 256), fill, np.float32))
    np.testing.assert_array_equal(state.momentum["v"], np.zeros((7, 1000), np.float32))


# -- accuracy ---------------------------------------------------------------------
@pytest.mark.parametrize("state_dtype", STATES)
def test_dequantize_state_is_a_float32_state_of_the_same_optimizer(state_dtype):
    tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, centered=True, state_dtype=state_dtype)
    params = {**PARAMS, "c": jnp.ones((4, 2048), jnp.complex64)}
    grads = jax.tree.map(lambda p: 0.3 * p, params)
    _, state = tx.update(grads, tx.init(params), params)
    chained = optax.chain(optax.clip_by_global_norm(1.0), tx)
    _, chained_state = chained.update(grads, chained.init(params), params)
    codebook = _storage.codebook_for(8 if state_dtype == "int8" else 4, real=True)
    for s in (state, chained_state[1]):
        plain = optax_rmsprop.dequantize_state(s, params)
        full = optax_rmsprop.rmsprop(1e-2, momentum=0.9, centered=True).init(params)
        # the step count (stochastic rounding's) is kept: a schedule may need it
        assert int(plain.rms.count) == 1
        chex.assert_trees_all_equal_shapes_and_dtypes(plain.rms._replace(count=None), full.rms)
        chex.assert_trees_all_equal_shapes_and_dtypes(plain.momentum, full.momentum)
        absmax = s.rms.nu_absmax["w"].reshape(64, -1)
        want = _quantize.decode_blocks(s.rms.nu["w"], absmax, codebook, 256)
        np.testing.assert_array_equal(plain.rms.nu["w"], want)
        assert plain.momentum["c"].dtype == jnp.complex64
        if state_dtype == "int4":  # two codes per byte: the params say each last axis
            with pytest.raises(ValueError, match="4-bit codes .* pass the parameters"):
                optax_rmsprop.dequantize_state(s)
        else:
            chex.assert_trees_all_equal(optax_rmsprop.dequantize_state(s), plain)
    untouched = optax_rmsprop.rmsprop(1e-2).init(PARAMS)
    chex.assert_trees_all_equal(optax_rmsprop.dequantize_state(untouched), untouched)


@pytest.mark.parametrize("state_dtype", STATES)
@pytest.mark.parametrize("schedule", [False, True], ids=["constant", "schedule"])
def test_dequantize_state_with_a_template_is_the_float32_optimizers_own_tree(schedule, state_dtype):
    # Quantized state always counts steps (stochastic rounding); the float32
    # optimizer only with a schedule: with its state as template, the tree is its own.
    lr = optax.linear_schedule(1e-2, 1e-3, 10) if schedule else 1e-2
    options = dict(momentum=0.9, centered=True)
    quantized = optax_rmsprop.rmsprop(lr, state_dtype=state_dtype, **options)
    full = optax_rmsprop.rmsprop(lr, **options)
    chained, chained_full = (optax.chain(optax.clip(1.0), t) for t in (quantized, full))
    grads = jax.tree.map(lambda p: 0.3 * p, PARAMS)
    _, state = chained.update(grads, chained.init(PARAMS), PARAMS)
    template = jax.eval_shape(chained_full.init, PARAMS)
    plain = optax_rmsprop.dequantize_state(state, PARAMS, template=template)
    chex.assert_trees_all_equal_shapes_and_dtypes(plain, template)
    assert (plain[1].rms.count is not None) == schedule
    kept = optax_rmsprop.dequantize_state(state, PARAMS)
    chex.assert_trees_all_equal(plain[1].rms.nu, kept[1].rms.nu)
    _, after = jax.jit(chained_full.update)(grads, plain, PARAMS)
    chex.assert_trees_all_equal_structs(after, template)


# Per-step error bounds (mean |error|, mean relative error): bitsandbytes' for 8 bits.
PER_STEP_BOUNDS = {"int8": (6e-5, 6e-4), "int4": (6e-5, 6e-4)}


@pytest.mark.slow
@pytest.mark.parametrize("state_dtype", STATES)
def test_per_step_error_resynced_as_bitsandbytes_measures_it(state_dtype):
    # bitsandbytes' test: 1024 x 4097 params, RMSprop(lr=0.01, alpha=0.9), 50
    # steps; the float32 reference starts each step from the 8-bit run's
    # params and dequantized state. Its bounds: mean |error| < 6e-5, mean
    # relative error < 6e-4.
    key = jax.random.key(0)
    params = 0.1 * jax.random.normal(key, (1024, 4097), F32)
    quantized = optax_rmsprop.rmsprop(0.01, decay=0.9, state_dtype=state_dtype)
    ref = optax_rmsprop.rmsprop(0.01, decay=0.9)
    step8, step32 = jitted_step(quantized), jitted_step(ref)
    state = quantized.init(params)
    abs_errors, rel_errors = [], []
    for t in range(50):
        grads = 0.01 * jax.random.normal(jax.random.fold_in(key, t + 1), params.shape, F32)
        want, _ = step32(params, optax_rmsprop.dequantize_state(state, params), grads)
        params, state = step8(params, state, grads)
        err = jnp.abs(params - want)
        abs_errors.append(float(jnp.mean(err)))
        rel_errors.append(float(jnp.mean(err / (jnp.abs(want) + 1e-9))))
    abs_bound, rel_bound = PER_STEP_BOUNDS[state_dtype]
    assert max(abs_errors) < abs_bound, max(abs_errors)
    assert max(rel_errors) < rel_bound, max(rel_errors)


# Drift and final loss over float32's: measured 0.27% / 1.006 (int8) and 2.4% / 1.055 (int4)
# with nu on the stochastically rounded grids (docs/state_precision.md).
DRIFT_BOUND = {"int8": 0.005, "int4": 0.04}
LOSS_BOUND = {"int8": 1.02, "int4": 1.08}


@pytest.mark.slow
@pytest.mark.parametrize("state_dtype", STATES)
def test_drift_over_1000_noisy_steps_without_resyncing(state_dtype):
    # A noisy least-squares problem: 1,000 steps of the 8-bit and the float32
    # optimizer from the same start on the same gradients, never re-synced.
    # Drift: |p8 - p32| relative to how far float32 travelled, |p32 - p0|.
    key = jax.random.key(42)
    target = jax.random.normal(key, (64, 4096), F32)
    p0 = jnp.zeros_like(target)
    runs = {}
    for name, precision in (("quantized", state_dtype), ("float32", None)):
        tx = optax_rmsprop.rmsprop(1e-3, decay=0.99, momentum=0.9, state_dtype=precision)

        # One jitted step per call, as a training loop runs it (XLA:CPU compiles the
        # 4-bit step inside a fori_loop to a program 2-3x slower).
        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def step(params, state, t, tx=tx):
            noise = jax.random.normal(jax.random.fold_in(key, t), target.shape, F32)
            return update_and_apply(tx)(params, state, (params - target) + 0.5 * noise)

        carry = (p0 + 0, tx.init(p0))
        for t in range(1000):
            carry = step(*carry, np.int32(t))
        runs[name] = carry[0]
    travelled = jnp.linalg.norm(runs["float32"] - p0)
    drift = float(jnp.linalg.norm(runs["quantized"] - runs["float32"]) / travelled)
    assert 0 < drift < DRIFT_BOUND[state_dtype], drift
    # and the quantized run solved the problem as well as the float32 one
    loss = {k: float(jnp.mean((p - target) ** 2)) for k, p in runs.items()}
    assert loss["quantized"] < LOSS_BOUND[state_dtype] * loss["float32"], loss


OPTIONS = [
    dict(momentum=None),
    dict(momentum=0.9),
    dict(momentum=0.9, lr_in_momentum=False),
    dict(momentum=0.9, nesterov=True),
    dict(centered=True),
    dict(centered=True, momentum=0.9),
    dict(bias_correction=True, momentum=0.9),
    dict(bias_correction=True, eps_in_sqrt=True),
    dict(weight_decay=1e-2),
    dict(weight_decay=1e-2, decoupled_weight_decay=True, momentum=0.9),
]
DTYPES = ["bfloat16", "float16", "float32", "float64", "complex64"]


def _option_and_dtype_params() -> list:
    """8 bits: every option set with every dtype (the fast tier: every option set in
    float32 and every dtype with centered momentum; CI runs them all). 4 bits, which
    shares the step and differs only in the codec: those same cases, marked slow."""
    rich = dict(centered=True, momentum=0.9)
    return [
        pytest.param(
            options,
            dtype,
            state_dtype,
            id=f"{state_dtype}-{options}-{dtype}",
            marks=()
            if state_dtype == "int8" and (dtype == "float32" or options == rich)
            else pytest.mark.slow,
        )
        for state_dtype in STATES
        for options in OPTIONS
        for dtype in DTYPES
        if state_dtype == "int8" or dtype == "float32" or options == rich
    ]


# mean |error| over mean |distance travelled| after 5 steps, per state and param precision;
# int4's 4-bit first moments are coarse (a step of 0.22 of the block's absmax at the top).
OPTION_TOLERANCE = {("int8", "full"): 0.03, ("int8", "half"): 0.1}
OPTION_TOLERANCE.update({("int4", "full"): 0.2, ("int4", "half"): 0.2})


@pytest.mark.parametrize("options,dtype,state_dtype", _option_and_dtype_params())
def test_every_option_and_dtype_tracks_float32_state(options, dtype, state_dtype):
    shape = (16, 512)
    key = jax.random.key(3)
    params = jax.random.normal(key, shape, F32).astype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        params = params + 1j * jax.random.normal(jax.random.fold_in(key, 1), shape, F32)
    runs = {}
    for precision in (state_dtype, None):
        tx = optax_rmsprop.rmsprop(1e-2, state_dtype=precision, **options)
        p, state, step = params, tx.init(params), jitted_step(tx)
        for t in range(5):
            g = jax.random.normal(jax.random.fold_in(key, t + 2), shape, F32).astype(dtype)
            p, state = step(p, state, g)
        runs[precision] = p
    got, want = runs[state_dtype], runs[None]
    assert got.dtype == want.dtype == params.dtype
    assert bool(jnp.all(jnp.isfinite(got)))
    moved = jnp.abs(want.astype(jnp.complex64) - params.astype(jnp.complex64))
    err = jnp.abs(got.astype(jnp.complex64) - want.astype(jnp.complex64))
    half = "half" if dtype in ("bfloat16", "float16") else "full"
    assert float(jnp.mean(err) / jnp.mean(moved)) < OPTION_TOLERANCE[state_dtype, half]


@pytest.mark.parametrize("state_dtype", STATES)
@pytest.mark.parametrize("options", [{}, dict(momentum=0.9, centered=True)], ids=str)
def test_zero_and_tiny_gradients_give_finite_steps(options, state_dtype):
    # Affine int8 quantization rounds small nu to 0 and divides by eps alone;
    # the dynamic map keeps nu down to 2**-48 of the block's absmax, and the step
    # uses the float32 nu it just computed, never a re-rounded one. Gradients:
    # a third 1e-20, a third 1, a third 0, and every other step all 0.
    params = jnp.ones((8, 1024), F32)
    grads = jnp.zeros_like(params).at[:, ::3].set(1e-20).at[:, 1::3].set(1.0)
    runs = {}
    for precision in (state_dtype, None):
        tx = optax_rmsprop.rmsprop(1e-2, eps=1e-8, state_dtype=precision, **options)
        p, state, step = params, tx.init(params), jitted_step(tx)
        for t in range(20):
            p, state = step(p, state, grads if t % 2 == 0 else jnp.zeros_like(grads))
            assert bool(jnp.all(jnp.isfinite(p))), (precision, t)
            assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))
        runs[precision] = p
    got = runs[state_dtype]
    np.testing.assert_array_equal(got[:, 2::3], params[:, 2::3])  # g = 0: no step
    moved = float(jnp.max(jnp.abs(runs[None] - params)))
    assert float(jnp.max(jnp.abs(got - runs[None]))) < 0.05 * moved


@pytest.mark.parametrize("state_dtype", STATES)
def test_a_block_of_zero_gradients_stays_zero_and_finite(state_dtype):
    # absmax 0: the block's codes stand for 0 exactly, whatever the map's floor.
    tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, centered=True, state_dtype=state_dtype)
    params = jnp.ones((8, 1024), F32)
    grads = jnp.zeros_like(params).at[:, 512:].set(0.3)  # blocks 0-3 of each row: all zero
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
    assert not jnp.any(updates[:, :512]) and bool(jnp.all(updates[:, 512:] < 0))
    back = optax_rmsprop.dequantize_state(state, params)
    for buffer in (back.rms.nu, back.rms.mu, back.momentum):
        assert not jnp.any(buffer[:, :512]) and bool(jnp.all(jnp.isfinite(buffer)))


def _largest_late_step(tiny, decay, state_dtype, steps=2000, late=200):
    """The zero-point problem: in every 128 coordinates one gradient is 1 and the rest ``tiny``.

    Returns the largest ``|step| / lr`` over the last ``late`` of ``steps`` steps.
    """
    shape, lr = (8, 1024), 1e-2
    grads = jnp.full(shape, tiny, F32).at[:, ::128].set(1.0)
    tx = optax_rmsprop.rmsprop(lr, decay=decay, eps=1e-8, state_dtype=state_dtype)

    def body(t, carry):
        params, state, largest = carry
        updates, state = tx.update(grads, state, params)
        late_step = jnp.where(t >= steps - late, jnp.max(jnp.abs(updates)), 0.0)
        return params + updates, state, jnp.maximum(largest, late_step)

    p0 = jnp.zeros(shape, F32)
    run = jax.jit(lambda: jax.lax.fori_loop(0, steps, body, (p0, tx.init(p0), jnp.float32(0))))
    return float(run()[2]) / lr


def _rounding_bound(state_dtype, tiny):
    """How much larger than float32's a step gets when ``nu = tiny**2`` (its block's
    absmax is 1) is stored as the grid value below it: with constant gradients the
    stored value stays on the two grid values around ``nu``."""
    m = {"int8": _quantize.NU, "int4": _quantize.NU4}[state_dtype].magnitudes
    below = np.searchsorted(m, tiny**2, side="right") - 1
    if below < 0:  # under the grid's floor: stored larger, a smaller step
        return 1.0
    return np.sqrt(m[below + 1] / m[below])


@pytest.mark.slow
@pytest.mark.parametrize("state_dtype", STATES)
@pytest.mark.parametrize("decay", [0.9, 0.99, 0.999])
@pytest.mark.parametrize("tiny", [1e-4, 1e-5, 3e-6, 1e-6])
def test_a_small_nu_beside_a_large_one_is_not_rounded_to_zero(tiny, decay, state_dtype):
    # A map with 0 stored these nu as 0, and the next step divided by
    # sqrt((1 - decay) * g**2) alone. Neither nu grid has a zero, so
    # a late step exceeds float32's by no more than rounding nu down allows.
    float32 = _largest_late_step(tiny, decay, None)
    quantized = _largest_late_step(tiny, decay, state_dtype)
    assert 0.9 < float32 < 1.2
    bound = _rounding_bound(state_dtype, tiny)
    assert quantized <= bound * float32 * (1 + 1e-3), (quantized, float32, bound)


@pytest.mark.parametrize("field", ["maps", "nu_scales"])
def test_a_state_saved_on_earlier_maps_is_refused_by_name(field):
    # 0.1's and 0.2's states had no `maps` (0.2 had `codebook`: nu on base-8 decades);
    # before them, nu's block maxima were `nu_scales`. flax refuses each on restore.
    serialization = pytest.importorskip("flax.serialization")
    tx = optax_rmsprop.rmsprop(1e-2, state_dtype="int8")
    state = tx.init(PARAMS)
    old = serialization.to_state_dict(state)
    old["rms"]["codebook"] = old["rms"].pop("maps")
    if field == "nu_scales":
        old["rms"]["nu_scales"] = old["rms"].pop("nu_absmax")
    with pytest.raises(ValueError, match=field):
        serialization.from_state_dict(state, old)


@pytest.mark.parametrize("state_dtype", STATES)
def test_a_state_restored_without_its_maps_mark_is_refused_before_a_step(state_dtype, tmp_path):
    # orbax restores a field missing from the checkpoint (a 0.1 or 0.2 state) as None:
    # the update and dequantize_state then refuse the codes, naming the field.
    ocp = pytest.importorskip("orbax.checkpoint")
    tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, state_dtype=state_dtype)
    state = tx.init(PARAMS)
    assert state.rms.maps.dtype == jnp.int32 and int(state.rms.maps) == _state.MAPS
    old = state._replace(rms=state.rms._replace(maps=None))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "old", old)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "old", state)
    assert restored.rms.maps is None
    with pytest.raises(ValueError, match="no `maps` field.*dequantize_state"):
        tx.update(PARAMS, restored, PARAMS)
    with pytest.raises(ValueError, match="no `maps` field"):
        optax_rmsprop.dequantize_state(restored)
    # float32 state carries no mark and needs none
    assert optax_rmsprop.rmsprop(1e-2).init(PARAMS).rms.maps is None


# -- composition -----------------------------------------------------------------
@pytest.mark.parametrize("state_dtype", STATES)
def test_effective_step_size_with_quantized_state_is_close_to_float32(state_dtype):
    g = {k: 0.5 * v for k, v in PARAMS.items()}
    sizes = {}
    for precision in (state_dtype, None):
        tx = optax_rmsprop.rmsprop(1e-2, centered=True, state_dtype=precision)
        _, state = tx.update(g, tx.init(PARAMS), PARAMS)
        sizes[precision] = optax_rmsprop.effective_step_size(state, 1e-2, eps=1e-8, params=PARAMS)
    chex.assert_trees_all_close(sizes[state_dtype], sizes[None], rtol=0.02)


@pytest.mark.parametrize("state_dtype", STATES)
def test_inject_hyperparams_vmap_and_multisteps_equal_the_plain_optimizer(state_dtype):
    plain = optax_rmsprop.rmsprop(1e-2, momentum=0.9, state_dtype=state_dtype)
    grads = jax.tree.map(lambda p: 0.3 * p, PARAMS)
    plain_updates, plain_state = plain.update(grads, plain.init(PARAMS), PARAMS)
    # inject_hyperparams: the same structure inside, the same step
    injected = optax.inject_hyperparams(optax_rmsprop.rmsprop)(
        1e-2, momentum=0.9, state_dtype=state_dtype
    )
    state = jax.jit(injected.init)(PARAMS)
    chex.assert_trees_all_equal_structs(state.inner_state, plain.init(PARAMS))
    updates, state = jax.jit(injected.update)(grads, state, PARAMS)
    chex.assert_trees_all_close(updates, plain_updates, rtol=1e-6)
    # (the injected decay is a float32 array, the plain one a Python float: a code may
    # round the other way, by at most one step of the map)
    dequantized = [
        optax_rmsprop.dequantize_state(s, PARAMS) for s in (state.inner_state, plain_state)
    ]
    chex.assert_trees_all_close(*dequantized, rtol=0.02 if state_dtype == "int8" else 0.07)
    # vmap over a batch of parameters: each row steps as alone
    batched = jnp.stack([jnp.full((8, 1024), v, F32) for v in (0.5, 1.0, 2.0)])
    states = jax.vmap(plain.init)(batched)
    u, _ = jax.vmap(plain.update)(batched, states, batched)
    for i in range(3):
        alone = plain.update(batched[i], plain.init(batched[i]), batched[i])[0]
        chex.assert_trees_all_close(u[i], alone)
    # MultiSteps: k equal micro-batches are one step with their mean
    multi = optax.MultiSteps(plain, every_k_schedule=2)
    s = multi.init(PARAMS)
    u, s = jax.jit(multi.update)(grads, s, PARAMS)
    chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, plain_updates))
    u, s = jax.jit(multi.update)(grads, s, PARAMS)
    chex.assert_trees_all_close(u, plain_updates, rtol=1e-6)


@pytest.mark.parametrize("state_dtype", STATES)
def test_serialization_round_trips_codes_and_scales(tmp_path, state_dtype):
    serialization = pytest.importorskip("flax.serialization")
    tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, state_dtype=state_dtype)
    _, state = tx.update(PARAMS, tx.init(PARAMS), PARAMS)
    blob = serialization.to_bytes(state)
    restored = serialization.from_bytes(tx.init(PARAMS), blob)
    chex.assert_trees_all_equal(restored, state)
    ocp = pytest.importorskip("orbax.checkpoint")
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "state", state)
    with ocp.StandardCheckpointer() as ckpt:
        back = ckpt.restore(tmp_path / "state", tx.init(PARAMS))
    chex.assert_trees_all_equal(back, state)


# the codes and absmax of nu and of a complex first moment, for params of shape (4, 2048)
COMPLEX_SHAPES = {
    "int8": ((4, 2048), (4, 8), (4, 2048, 2), jnp.int8, (4, 8, 2)),
    "int4": ((4, 1024), (4, 16, 1), (4, 1024, 2), jnp.uint8, (4, 16, 1, 2)),
}


@pytest.mark.parametrize("state_dtype", STATES)
def test_complex_moments_are_quantized_as_real_and_imaginary_parts(state_dtype):
    params = jnp.ones((4, 2048), jnp.complex64)
    tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, centered=True, state_dtype=state_dtype)
    state = tx.init(params)
    nu_shape, nu_absmax, codes_shape, codes_dtype, absmax_shape = COMPLEX_SHAPES[state_dtype]
    assert state.rms.nu.shape == nu_shape and state.rms.nu.dtype == jnp.uint8  # |g|**2: real
    assert state.rms.nu_absmax.shape == nu_absmax
    buffers = [(state.rms.mu, state.rms.mu_absmax), (state.momentum, state.momentum_absmax)]
    for codes, absmax in buffers:
        assert codes.shape == codes_shape and codes.dtype == codes_dtype  # (re, im)
        assert absmax.shape == absmax_shape
    grads = (0.5 - 2j) * jnp.broadcast_to(jnp.arange(1.0, 2049.0) / 2048, (4, 2048))
    _, state = tx.update(grads, state, params)
    want = optax_rmsprop.rmsprop(1e-2, momentum=0.9, centered=True)
    _, want_state = want.update(grads, want.init(params), params)
    back = optax_rmsprop.dequantize_state(state, params)
    tolerance = 0.01 if state_dtype == "int8" else 0.12  # half the widest gap, 0.225 / 2
    for got, ref in ((back.rms.mu, want_state.rms.mu), (back.momentum, want_state.momentum)):
        assert got.dtype == jnp.complex64
        assert float(jnp.max(jnp.abs(got - ref))) < tolerance * float(jnp.max(jnp.abs(ref)))


AXIS_TYPES = {"auto": jax.sharding.AxisType.Auto, "explicit": jax.sharding.AxisType.Explicit}


@pytest.mark.xla_contract
@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")
@pytest.mark.parametrize("state_dtype", STATES)
@pytest.mark.parametrize("axis_types", AXIS_TYPES)
def test_sharded_state_needs_no_collective(axis_types, state_dtype):
    # Blocks run along the last axis inside each shard, so a step on params
    # sharded (data, model) over 4 x 2 devices moves nothing between devices.
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AXIS_TYPES[axis_types],) * 2)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "model"))
    params = jax.device_put(jnp.ones((64, 4096), F32), sharding)
    tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, centered=True, state_dtype=state_dtype)
    with jax.set_mesh(mesh):
        state = jax.jit(tx.init)(params)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    if axis_types == "auto":  # jit(init) of constants cannot know the sharding: place it
        state = jax.tree.map(lambda x: jax.device_put(x, sharding if x.ndim else replicated), state)
    for leaf in jax.tree.leaves(state):  # codes and scales alike; the codebook mark replicated
        expected = sharding if leaf.ndim else replicated
        assert leaf.sharding.is_equivalent_to(expected, leaf.ndim), leaf.shape
    with jax.set_mesh(mesh):
        compiled = jax.jit(jitted_step(tx).__wrapped__).lower(params, state, params).compile()
        new_params, new_state = compiled(params, state, params)
    hlo = compiled.as_text()
    for collective in ("all-gather", "all-reduce", "all-to-all", "collective-permute"):
        assert collective not in hlo, collective
    assert new_params.sharding.is_equivalent_to(sharding, 2)
    assert new_state.rms.nu.sharding.is_equivalent_to(sharding, 2)
    absmax = new_state.rms.nu_absmax
    assert absmax.sharding.is_equivalent_to(sharding, absmax.ndim)


# -- bad input ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(state_dtype="int2"), "state_dtype must be None, a floating dtype .* or 'int4'"),
        (dict(state_dtype="uint8"), "state_dtype must be None, a floating dtype .* or 'int4'"),
        (dict(state_dtype="int8", block_size=0), "block_size must be a positive integer"),
        (dict(state_dtype="int8", block_size=-256), "block_size must be a positive integer"),
        (dict(state_dtype="int8", block_size=2.5), "block_size must be a positive integer"),
        (dict(state_dtype="int8", block_size=True), "block_size must be a positive integer"),
        (dict(state_dtype="int8", min_quantized_size=0), "min_quantized_size must be a positive"),
        (dict(block_size=128), "block_size applies to state_dtype='int8' or 'int4' only"),
        (dict(state_dtype=jnp.bfloat16, min_quantized_size=10), "applies to state_dtype='int8'"),
        (dict(state_dtype="int4", block_size=127), "block_size must be even with .*'int4'"),
        (dict(state_dtype="int4", block_size=0), "block_size must be a positive integer"),
    ],
    ids=str,
)
@pytest.mark.parametrize("factory", [optax_rmsprop.rmsprop, optax_rmsprop.scale_by_rms])
def test_bad_int8_settings_are_refused_by_name(factory, kwargs, match):
    args = (1e-2,) if factory is optax_rmsprop.rmsprop else ()
    with pytest.raises(ValueError, match=match):
        factory(*args, **kwargs)


def test_quantized_states_are_named_by_string_only():
    # "int8" stores uint8 codes and "int4" bytes of two codes: an integer dtype is refused
    # by name rather than taken to mean either.
    assert (
        optax_rmsprop.rmsprop(1e-2, state_dtype="int8").init(PARAMS).rms.nu["w"].dtype == jnp.uint8
    )
    for spelling, name in ((jnp.int8, "int8"), (np.int8, "int8"), (jnp.int4, "int4")):
        with pytest.raises(ValueError, match=f"ambiguous: pass the string state_dtype='{name}'"):
            optax_rmsprop.rmsprop(1e-2, state_dtype=spelling)


@pytest.mark.parametrize("codebook", [_quantize.NU, _quantize.NU4], ids=str)
def test_all_block_sizes_tile_the_last_axis(codebook):
    for length, block in itertools.product([1, 255, 256, 257, 4097], [1, 64, 256, 1000]):
        n = _quantize.num_blocks(length, block)
        x = jnp.arange(1.0, length + 1)
        absmax = _quantize.block_absmax(x, n)
        codes = _quantize.encode_blocks(x, absmax, codebook)
        back = _quantize.decode_blocks(codes, absmax, codebook, length)
        assert back.shape == (length,)
        assert float(back[-1]) == length  # the last element is its block's absmax
