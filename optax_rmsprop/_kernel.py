"""A one-pass Pallas kernel for the 8-bit RMS step, and the switch that selects it.

With ``state_dtype="int8"`` the XLA path (:mod:`optax_rmsprop._storage`)
decodes each quantized buffer, updates it, takes every block's absmax and
encodes it again, in separate XLA fusions. The kernel here does one RMS step
per tile of whole rows in one pass, as bitsandbytes'
``kOptimizerStatic8bit1StateBlockwise`` does: it loads the gradient, the
``nu`` codes and their block absmax (and, centered, ``mu``'s), dequantizes,
updates the moments in registers, reduces each block's new absmax inside the
tile (a tile holds whole rows of the leaf's last axis, so whole blocks),
computes ``g / denom``, encodes and writes the new codes and absmax. It gives
bit for bit what :meth:`Layout.read <optax_rmsprop._storage.Layout.read>`,
:func:`~optax_rmsprop._scale_by_rms.update_moments`,
:func:`~optax_rmsprop._scale_by_rms.rms_scale` and
:meth:`Layout.write <optax_rmsprop._storage.Layout.write>` give (the tests
compare codes, absmax and ``g / denom`` on CPU, in interpret mode).

What it covers: real 8-bit leaves whose gradient is float32 (float32,
bfloat16 and float16 parameters), any leading shape, any last axis (padded
blocks too), plain, centered, ``eps_in_sqrt`` and bias correction, with
``decay`` and ``eps`` as Python numbers or float32 scalars. Everything else
(complex and float64 leaves, float64 hyperparameters, unquantized leaves, the
momentum buffer, 4-bit state) keeps the XLA path, leaf by leaf, automatically.

Which path runs: the environment variable ``OPTAX_RMSPROP_KERNEL``, read when
the step is traced: ``xla`` (the default) or ``pallas``. With ``pallas`` the
kernel runs through ``pl.pallas_call``: with ``interpret=True`` on CPU (for
tests: milliseconds per tile) and compiled by Mosaic on TPU (it lowers there
from a CPU host; it has never run on one). On GPU it does not lower yet:
``pl.pallas_call`` goes to Mosaic GPU (JAX 0.10), whose async copies take at
most 256 elements per dimension and 16-byte strides, or to Triton (deprecated
from JAX 0.11), which lowers no slice and only power-of-two shapes; a GPU
kernel would be a separate Mosaic GPU (``plgpu``) version. So on GPU, on
JAX before 0.7 (on 0.4.35 its ``g / denom`` differs from the XLA path's by a
few ulps) and where JAX has no usable Pallas, :func:`unavailable` says why and
``pallas`` falls back to the XLA path with a warning. Nothing has been run or
timed on an accelerator: the default stays the XLA path until the kernel is
measured faster on real hardware.

Inside the kernel nothing gathers (Mosaic lowers no table lookup): the codec
is :mod:`optax_rmsprop._quantize`'s, integer operations, selects and exact
comparisons, the same functions the XLA path runs.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from optax_rmsprop import _dtypes, _quantize, _storage
from optax_rmsprop._quantize import Codebook

try:  # Pallas is experimental: a JAX without it (or with another API) keeps the XLA path
    from jax.experimental import pallas as pl

    _PALLAS_ERROR = "" if hasattr(pl, "pallas_call") and hasattr(pl, "BlockSpec") else "no API"
except Exception as err:  # noqa: BLE001 - any failure to import means no kernel
    pl = None
    _PALLAS_ERROR = f"{type(err).__name__}: {err}"

ENV_VAR = "OPTAX_RMSPROP_KERNEL"
XLA, PALLAS = "xla", "pallas"
BACKENDS = (XLA, PALLAS)
TILE_ELEMENTS = 1 << 16  # elements per tile (rows of the last axis), at least one row
_MIN_JAX = (0, 7)  # checked bit for bit on 0.7.2 and 0.10.2
_ROW_MULTIPLE = 32  # rows per tile: a multiple of TPU's 8-bit sublane tile unless all rows


# -- the switch -------------------------------------------------------------------------
def backend() -> str:
    """The selected path, from ``OPTAX_RMSPROP_KERNEL`` (read now, at trace time).

    Returns:
      ``"xla"`` (the default, also for an empty value) or ``"pallas"``.

    Raises:
      ValueError: naming the variable and the allowed values, for any other value.
    """
    value = os.environ.get(ENV_VAR, "").strip().lower() or XLA
    if value not in BACKENDS:
        raise ValueError(
            f"{ENV_VAR} must be one of {', '.join(BACKENDS)} (default {XLA}), "
            f"got {os.environ[ENV_VAR]!r}."
        )
    return value


def unavailable() -> str | None:
    """Why this JAX, on this backend, cannot run the kernel, or None when it can."""
    if _PALLAS_ERROR:
        return f"jax {jax.__version__} has no usable jax.experimental.pallas ({_PALLAS_ERROR})"
    if _version() < _MIN_JAX:
        return (
            f"jax {jax.__version__} is older than 0.7: there its Pallas (0.4.35 checked) gives "
            "g / denom a few float32 ulps away from the XLA path's, not bit for bit"
        )
    if jax.default_backend() == "gpu":
        return (
            "the kernel does not lower on GPU yet (pl.pallas_call's Mosaic GPU path rejects its "
            "tiles, Triton lowers no slice): a Mosaic GPU version (plgpu) is not written"
        )
    return None


def _version() -> tuple[int, ...]:
    return tuple(int(part) for part in jax.__version__.split(".")[:2])


@functools.lru_cache(maxsize=1)
def _warn_unavailable(reason: str) -> None:
    warnings.warn(f"{ENV_VAR}={PALLAS}: {reason}; using the XLA path.", stacklevel=3)


def use_pallas() -> bool:
    """Whether the step should use the kernel: ``pallas`` selected and available."""
    if backend() != PALLAS:
        return False
    reason = unavailable()
    if reason is not None:
        _warn_unavailable(reason)
        return False
    return True


# -- the hook for RmsCore.step -------------------------------------------------------------
class Stored(NamedTuple):
    """One buffer of one leaf as stored: codes (or floats) and absmax, with its layout."""

    values: jax.Array
    absmax: jax.Array | None
    layout: _storage.Layout


def rms_leaf(
    g: jax.Array,
    nu: Stored,
    mu: Stored | None,
    *,
    decay: ArrayLike,
    eps: ArrayLike,
    eps_in_sqrt: bool,
    correction: jax.Array | None,
) -> tuple | None:
    """The kernel's RMS step for one leaf, or None where the XLA path should run.

    Args:
      g: the gradient in its compute dtype.
      nu: the stored ``nu``.
      mu: the stored ``mu`` (centered), or None.
      decay: the decay of the moving averages.
      eps: epsilon.
      eps_in_sqrt: where epsilon goes.
      correction: the bias-correction factor in ``g``'s real dtype, or None.

    Returns:
      ``(scaled, (nu_codes, nu_absmax), (mu_codes, mu_absmax) or None)`` when
      ``pallas`` is selected and the leaf is covered, else None.
    """
    if not use_pallas() or not covers(g, nu.layout, None if mu is None else mu.layout):
        return None
    hyper = [decay, eps] + ([] if correction is None else [correction])
    if not all(_is_float32_scalar(h) for h in hyper):
        return None
    out = rms_step(
        g,
        nu.values,
        nu.absmax,
        None if mu is None else mu.values,
        None if mu is None else mu.absmax,
        decay=decay,
        eps=eps,
        eps_in_sqrt=eps_in_sqrt,
        correction=correction,
    )
    return out[0], out[1:3], (out[3:5] if mu is not None else None)


def covers(g: jax.Array, nu: _storage.Layout, mu: _storage.Layout | None) -> bool:
    """Whether the kernel covers a leaf: 8-bit codes, real, float32 compute dtype."""
    layouts = [nu] if mu is None else [nu, mu]
    return g.dtype == jnp.float32 and all(
        x.quantized and not x.codebook.packed and not x.complex for x in layouts
    )


def _is_float32_scalar(value: Any) -> bool:
    """A Python number (weakly typed) or a float32 scalar: arithmetic stays float32."""
    if _dtypes.is_weak_scalar(value):
        return True
    return jnp.ndim(value) == 0 and jnp.result_type(value) == jnp.float32


# -- the kernel -----------------------------------------------------------------------------
def rms_step(
    g: jax.Array,
    nu_codes: jax.Array,
    nu_absmax: jax.Array,
    mu_codes: jax.Array | None = None,
    mu_absmax: jax.Array | None = None,
    *,
    decay: ArrayLike,
    eps: ArrayLike,
    eps_in_sqrt: bool,
    correction: jax.Array | None,
    interpret: bool | None = None,
    tile_rows: int | None = None,
) -> tuple[jax.Array, ...]:
    """One RMS step of a quantized leaf in one pass: the XLA path's result, bit for bit.

    The leaf is seen as rows of its last axis (the leading axes flattened); a
    tile holds whole rows, so each block's absmax is reduced inside the tile.

    Args:
      g: the float32 gradient, shaped like the parameter.
      nu_codes: ``nu``'s ``uint8`` codes on :data:`~optax_rmsprop._quantize.NU`.
      nu_absmax: their float32 absmax, shape ``(*g.shape[:-1], n_blocks)``.
      mu_codes: centered: ``mu``'s ``int8`` codes on ``SIGNED``; else None.
      mu_absmax: centered: their absmax; else None.
      decay: the decay, a Python number or float32 scalar.
      eps: epsilon, a Python number or float32 scalar.
      eps_in_sqrt: ``sqrt(var + eps)`` instead of ``sqrt(var) + eps``.
      correction: the float32 bias-correction factor, or None.
      interpret: run ``pallas_call`` in interpret mode; None: on CPU only.
      tile_rows: rows per tile; None: about :data:`TILE_ELEMENTS` elements.

    Returns:
      ``(scaled, nu_codes, nu_absmax)``, and ``mu_codes, mu_absmax`` after
      them when centered, shaped and typed like the inputs.
    """
    shape, length = g.shape, g.shape[-1]
    n_blocks = nu_absmax.shape[-1]
    rows = math.prod(shape[:-1])
    centered = mu_codes is not None
    arrays = [g, nu_codes] + ([mu_codes] if centered else [])
    absmaxes = [nu_absmax] + ([mu_absmax] if centered else [])
    static, dynamic = _split_scalars(decay=decay, eps=eps, correction=correction)
    tile = _tile_rows(rows, length) if tile_rows is None else min(tile_rows, rows)

    def spec(width: int) -> Any:
        return pl.BlockSpec((tile, width), lambda i: (i, 0))

    body = functools.partial(
        _rms_body,
        centered=centered,
        static=static,
        dynamic_names=tuple(dynamic),
        eps_in_sqrt=eps_in_sqrt,
        length=length,
    )
    codes_out = [jax.ShapeDtypeStruct((rows, length), c.dtype) for c in arrays[1:]]
    absmax_out = jax.ShapeDtypeStruct((rows, n_blocks), jnp.float32)
    out_shape = [jax.ShapeDtypeStruct((rows, length), jnp.float32)]
    for codes in codes_out:
        out_shape += [codes, absmax_out]
    inputs = [a.reshape(rows, length) for a in arrays]
    inputs += [a.reshape(rows, n_blocks) for a in absmaxes]
    in_specs = [spec(length)] * len(arrays) + [spec(n_blocks)] * len(absmaxes)
    if dynamic:
        inputs.append(jnp.stack([jnp.asarray(v, jnp.float32) for v in dynamic.values()])[None])
        in_specs.append(pl.BlockSpec((1, len(dynamic)), lambda i: (0, 0)))
    out = pl.pallas_call(
        body,
        out_shape=out_shape,
        grid=(pl.cdiv(rows, tile),),
        in_specs=in_specs,
        out_specs=[spec(o.shape[-1]) for o in out_shape],
        interpret=jax.default_backend() == "cpu" if interpret is None else interpret,
        name="rms_int8_step",
    )(*inputs)
    block_shape = (*shape[:-1], n_blocks)
    return tuple(x.reshape(shape if x.shape[-1] == length else block_shape) for x in out)


def _split_scalars(**scalars: ArrayLike | None) -> tuple[dict, dict]:
    """Python numbers stay in the kernel's code; arrays become one float32 operand."""
    static, dynamic = {}, {}
    for name, value in scalars.items():
        if value is None or _dtypes.is_weak_scalar(value):
            static[name] = value
        else:
            dynamic[name] = value
    return static, dynamic


def _tile_rows(rows: int, length: int) -> int:
    """About :data:`TILE_ELEMENTS` per tile: all rows, or a multiple of 32 of them."""
    tile = max(1, TILE_ELEMENTS // length)
    if tile >= rows:
        return rows
    return (
        max(_ROW_MULTIPLE, tile // _ROW_MULTIPLE * _ROW_MULTIPLE) if rows > _ROW_MULTIPLE else rows
    )


def _rms_body(
    *refs: Any,
    centered: bool,
    static: dict,
    dynamic_names: tuple[str, ...],
    eps_in_sqrt: bool,
    length: int,
) -> None:
    """The kernel: one tile of rows, read once and written once."""
    from optax_rmsprop import _scale_by_rms  # here: _scale_by_rms imports this module

    n_in = (5 if centered else 3) + (1 if dynamic_names else 0)
    ins, outs = refs[:n_in], refs[n_in:]
    g_ref, nu_ref = ins[0], ins[1]
    mu_ref = ins[2] if centered else None
    nu_max_ref = ins[3 if centered else 2]
    mu_max_ref = ins[4] if centered else None
    scalars = dict(static)
    if dynamic_names:
        values = ins[-1][...]
        scalars.update({name: values[:, i : i + 1] for i, name in enumerate(dynamic_names)})

    g = g_ref[...]
    nu = _dequantize(nu_ref[...], nu_max_ref[...], _quantize.NU, length)
    mu = (
        None
        if mu_ref is None
        else _dequantize(mu_ref[...], mu_max_ref[...], _quantize.SIGNED, length)
    )
    nu, mu = _scale_by_rms.update_moments(g, nu, mu, decay=scalars["decay"])
    scaled = _scale_by_rms.rms_scale(
        g, nu, mu, eps=scalars["eps"], eps_in_sqrt=eps_in_sqrt, correction=scalars["correction"]
    )
    outs[0][...] = scaled.astype(outs[0].dtype)
    _quantize_into(nu, _quantize.NU, outs[1], outs[2])
    if centered:
        _quantize_into(mu, _quantize.SIGNED, outs[3], outs[4])


def _dequantize(codes: jax.Array, absmax: jax.Array, codebook: Codebook, length: int) -> jax.Array:
    """``decode_blocks`` on a tile: the same operations, the absmax spread by block."""
    return _quantize.decode(codes, codebook) * _spread(absmax, length)


def _quantize_into(x: jax.Array, codebook: Codebook, codes_ref: Any, absmax_ref: Any) -> None:
    """``Layout.write`` on a tile: each block's absmax, then the codes relative to it."""
    absmax = _tile_absmax(x, absmax_ref.shape[-1])
    scale = _spread(absmax, x.shape[-1])
    codes_ref[...] = _quantize.encode(x / jnp.where(scale > 0, scale, 1.0), codebook)
    absmax_ref[...] = absmax


def _blocks(length: int, n_blocks: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each block along the last axis; the last may be short."""
    block = math.ceil(length / n_blocks)
    return [(j * block, min((j + 1) * block, length)) for j in range(n_blocks)]


def _tile_absmax(x: jax.Array, n_blocks: int) -> jax.Array:
    """``block_absmax`` inside a tile: the max of ``|x|``'s bits per block (NaN wins)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int32) & 0x7FFFFFFF
    maxima = [
        jnp.max(bits[:, start:stop], axis=-1, keepdims=True)
        for start, stop in _blocks(x.shape[-1], n_blocks)
    ]
    return jax.lax.bitcast_convert_type(jnp.concatenate(maxima, axis=-1), jnp.float32)


def _spread(absmax: jax.Array, length: int) -> jax.Array:
    """``per_element`` inside a tile: each block's absmax over its columns."""
    rows = absmax.shape[0]
    parts = [
        jnp.broadcast_to(absmax[:, j : j + 1], (rows, stop - start))
        for j, (start, stop) in enumerate(_blocks(length, absmax.shape[-1]))
    ]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
