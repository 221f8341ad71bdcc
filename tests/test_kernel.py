"""The one-pass Pallas kernel (``OPTAX_RMSPROP_KERNEL=pallas``) against the XLA path.

On CPU the kernel runs in interpret mode; every comparison is bitwise: the
kernel reuses ``update_moments``, ``rms_scale`` and ``_quantize.decode`` and does the same float32
operations, so codes, absmax and ``g / denom`` must be identical.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop
from optax_rmsprop import _jax_versions, _kernel, _quantize, _scale_by_rms, _storage

F32 = jnp.float32
MAPS = {"nu": _quantize.NU, "signed": _quantize.SIGNED}
needs_kernel = pytest.mark.skipif(
    _kernel.unavailable() is not None, reason=str(_kernel.unavailable())
)


# -- the switch -------------------------------------------------------------------------
def test_the_switch_is_read_when_called_and_checked(monkeypatch):
    monkeypatch.delenv(_kernel.ENV_VAR, raising=False)
    assert _kernel.backend() == "xla"
    monkeypatch.setenv(_kernel.ENV_VAR, "pallas")
    assert _kernel.backend() == "pallas"
    monkeypatch.setenv(_kernel.ENV_VAR, "triton")
    with pytest.raises(ValueError, match=r"OPTAX_RMSPROP_KERNEL must be one of xla, pallas"):
        _kernel.backend()
    tx = optax_rmsprop.rmsprop(0.1, state_dtype="int8")  # built fine; the step's trace refuses
    params = jnp.ones((16, 256))
    with pytest.raises(ValueError, match="'triton'"):
        tx.update(params, tx.init(params), params)


# -- the kernel against Layout.read + update_moments + rms_scale + Layout.write ------------
def _state(shape, n_blocks, key):
    nu_key, mu_key, g_key = jax.random.split(jax.random.key(key), 3)
    nu = jax.random.normal(nu_key, shape, F32) ** 2
    nu = nu.at[..., :3].set(0.0)  # zeros beside large values: the map's floor
    mu = 0.3 * jax.random.normal(mu_key, shape, F32)
    nu_max, mu_max = (_quantize.block_absmax(x, n_blocks) for x in (nu, mu))
    codes = _quantize.encode_blocks(nu, nu_max, _quantize.NU)
    mu_codes = _quantize.encode_blocks(mu, mu_max, _quantize.SIGNED)
    g = jax.random.normal(g_key, shape, F32).at[..., -2:].set(0.0)
    return g, codes, nu_max, mu_codes, mu_max


def _xla_path(g, nu_codes, nu_max, mu_codes, mu_max, **hyper):
    nu_layout = _storage.Layout(np.dtype(np.float32), _quantize.NU, nu_max.shape[-1])
    mu_layout = _storage.Layout(np.dtype(np.float32), _quantize.SIGNED, nu_max.shape[-1])
    nu = nu_layout.read(nu_codes, nu_max, F32)
    mu = None if mu_codes is None else mu_layout.read(mu_codes, mu_max, F32)
    hyper = dict(hyper)
    nu, mu = _scale_by_rms.update_moments(g, nu, mu, decay=hyper.pop("decay"))
    scaled = _scale_by_rms.rms_scale(g, nu, mu, **hyper)
    out = (scaled, *nu_layout.write(nu, nu_max))
    return out if mu is None else (*out, *mu_layout.write(mu, mu_max))


CASES = {
    "plain": dict(centered=False, eps_in_sqrt=False, correction=None),
    "eps_in_sqrt": dict(centered=False, eps_in_sqrt=True, correction=None, eps=1e-3),
    "bias_correction": dict(centered=False, eps_in_sqrt=False, correction=1.5),
    "centered": dict(centered=True, eps_in_sqrt=False, correction=None),
    "all": dict(centered=True, eps_in_sqrt=True, correction=1.25, eps=1e-2),
    "array_hyperparameters": dict(
        centered=True, eps_in_sqrt=False, correction=None, decay=F32(0.95), eps=F32(1e-6)
    ),
}


@needs_kernel
@pytest.mark.parametrize(
    "case, shape",
    [
        ("plain", (40, 1000)),  # 4 blocks of 250: L a multiple of n_blocks, not of 256
        ("eps_in_sqrt", (3, 5, 300)),  # 2 blocks of 150
        ("bias_correction", (2, 2, 1030)),  # 5 blocks of 206, the last 206 - 4 = 202 long
        ("centered", (64, 256)),  # one block per row, 4 tiles
        ("all", (40, 1000)),
        ("array_hyperparameters", (4097,)),  # one row of 17 blocks, the last short
    ],
)
def test_the_kernel_equals_the_xla_path_bitwise(case, shape):
    options = dict(CASES[case])
    centered = options.pop("centered")
    correction = options.pop("correction")
    hyper = {"decay": 0.9, "eps": 1e-8, **options}
    hyper["correction"] = None if correction is None else F32(correction)
    g, nu_codes, nu_max, mu_codes, mu_max = _state(shape, _quantize.num_blocks(shape[-1], 256), 0)
    if not centered:
        mu_codes = mu_max = None
    want = jax.jit(lambda *a: _xla_path(*a, **hyper))(g, nu_codes, nu_max, mu_codes, mu_max)
    kernel = jax.jit(lambda *a: _kernel.rms_step(*a, tile_rows=16, interpret=True, **hyper))
    got = kernel(g, nu_codes, nu_max, mu_codes, mu_max)
    assert len(got) == len(want) == (5 if centered else 3)
    names = ("scaled", "nu codes", "nu absmax", "mu codes", "mu absmax")[: len(got)]
    for name, x, y in zip(names, got, want, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert np.any(np.asarray(got[1]) != np.asarray(nu_codes))  # the state moved


# -- through the public optimizer -------------------------------------------------------------
def _run(monkeypatch, backend, tx, params, steps=2):
    monkeypatch.setenv(_kernel.ENV_VAR, backend)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p), donate_argnums=(1,))
    state = tx.init(params)
    jaxpr = str(jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p))(params, state, params))
    for t in range(steps):
        keys = jax.random.split(jax.random.key(t), len(jax.tree.leaves(params)))
        leaves, tree = jax.tree.flatten(params)
        grads = tree.unflatten(
            [
                jax.random.normal(k, x.shape, F32).astype(x.dtype)
                for k, x in zip(keys, leaves, strict=True)
            ]
        )
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state, jaxpr.count("pallas_call")


@needs_kernel
def test_rmsprop_with_bf16_params_and_a_donated_step_is_unchanged_bitwise(monkeypatch):
    params = {
        "w": jnp.ones((48, 1000), jnp.bfloat16),  # quantized, bf16 params, padded blocks
        "v": jnp.full((2, 3, 700), 0.5, F32),  # quantized, leading axes, 3 blocks of 234
        "z": jnp.ones((64, 80), jnp.complex64),  # quantized but complex: the XLA path
        "b": jnp.ones((10,), F32),  # unquantized: the XLA path
    }
    tx = optax_rmsprop.rmsprop(
        0.01, centered=True, bias_correction=True, state_dtype="int8", min_quantized_size=4000
    )
    want = _run(monkeypatch, "xla", tx, params)
    got = _run(monkeypatch, "pallas", tx, params)
    assert want[2] == 0 and got[2] == 2  # w and v
    chex_equal = jax.tree.map(lambda x, y: np.array_equal(x, y), got[:2], want[:2])
    assert all(jax.tree.leaves(chex_equal)), chex_equal


@needs_kernel
@pytest.mark.parametrize(
    "options",
    [
        dict(eps_in_sqrt=True, momentum=0.9),  # the momentum buffer keeps the XLA path
        dict(decay=np.float64(0.9)),  # float64 arithmetic (x64 on): the XLA path
    ],
    ids=["momentum", "float64_decay"],
)
def test_option_sets_the_kernel_leaves_out_keep_the_xla_path(monkeypatch, options):
    params = {"w": jnp.ones((16, 512), F32)}
    tx = optax_rmsprop.rmsprop(0.01, state_dtype="int8", min_quantized_size=1, **options)
    want = _run(monkeypatch, "xla", tx, params, steps=1)
    got = _run(monkeypatch, "pallas", tx, params, steps=1)
    assert got[2] == (0 if "decay" in options else 1)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, got[:2], want[:2])))


@needs_kernel
def test_4bit_state_keeps_the_xla_path(monkeypatch):
    params = {"w": jnp.ones((16, 512), F32)}
    tx = optax_rmsprop.rmsprop(0.01, centered=True, state_dtype="int4", min_quantized_size=1)
    want = _run(monkeypatch, "xla", tx, params, steps=1)
    got = _run(monkeypatch, "pallas", tx, params, steps=1)
    assert got[2] == 0
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, got[:2], want[:2])))


@needs_kernel
@pytest.mark.skipif(
    tuple(int(p) for p in jax.__version__.split(".")[:2]) < (0, 7),
    reason="lowering for another platform from a CPU host: checked on jax >= 0.7",
)
def test_the_kernel_lowers_for_tpu_without_a_gather():
    g, nu_codes, nu_max, mu_codes, mu_max = _state((64, 1000), 4, 1)
    step = jax.jit(
        lambda *a: _kernel.rms_step(
            *a, decay=0.9, eps=1e-8, eps_in_sqrt=False, correction=F32(1.1), interpret=False
        )
    )
    with _jax_versions.enable_x64(False):  # as on a TPU (jax 0.7's Mosaic casts no float64)
        traced = step.trace(g, nu_codes, nu_max, mu_codes, mu_max)
        text = traced.lower(lowering_platforms=("tpu",)).as_text()
    assert "tpu_custom_call" in text
