"""How each per-parameter state buffer is stored: a floating array, or 8-bit codes.

``nu``, ``mu`` and the momentum buffer are read into the dtype the update is
computed in, updated there, and written back in their storage format:

* a floating array, of ``state_dtype`` or, by default, the parameter's dtype
  but at least float32 (:mod:`optax_rmsprop._dtypes`);
* with ``state_dtype="int8"``, block-quantized 8-bit codes
  (:mod:`optax_rmsprop._quantize`): ``nu`` on the unsigned map, first moments
  on the signed map. Leaves with fewer than ``min_quantized_size`` elements,
  and scalars, stay as the default policy keeps them: they cost little and are
  often biases and norms.

A buffer is a pair ``(values, scales)``: ``values`` is shaped like the
parameter (the float array, or the codes) and ``scales`` is the float32
per-block absmax of 8-bit codes (at least 1-D); for a float buffer it is
None, or, in an 8-bit state, a float32 scalar 0 (a leaf too small to
quantize), so that every position of a scales tree holds an array that
checkpointers can save (orbax refuses zero-size arrays). The state keeps values and
scales in parallel trees, so every state leaf is a plain array at its
parameter's position, as ``nnx.Optimizer``, ``optax.tree.map_params`` and
checkpointers expect. A complex first moment's codes and scales carry a
trailing axis of 2: real and imaginary parts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from optax_rmsprop import _dtypes, _quantize, _tree
from optax_rmsprop._quantize import QuantizedArray
from optax_rmsprop._tree import Tree


@dataclasses.dataclass(frozen=True)
class StatePrecision:
    """The resolved ``state_dtype`` and its 8-bit settings.

    Attributes:
      dtype: a floating dtype for every buffer, or None for the default policy
        (and for 8-bit state's unquantized small leaves).
      int8: whether buffers of at least ``min_size`` elements are 8-bit.
      block_size: elements per quantization block (along the last axis).
      min_size: the smallest leaf that is quantized.
    """

    dtype: np.dtype | None = None
    int8: bool = False
    block_size: int = 256
    min_size: int = 4096

    def quantizes(self, param: jax.Array) -> bool:
        return self.int8 and param.ndim >= 1 and param.size >= self.min_size


def init(
    param: jax.Array, fill: float, precision: StatePrecision, *, real: bool, path: str = ""
) -> tuple[jax.Array, jax.Array | None]:
    """``(values, scales)`` of a buffer for ``param`` filled with ``fill``.

    ``real``: a real buffer (``nu``); else one of the parameter's kind (moments).
    """
    dtype_of = _dtypes.nu_dtype if real else _dtypes.moment_dtype
    dtype = dtype_of(param.dtype, precision.dtype, path)  # also rejects integer params
    if not precision.quantizes(param):
        unquantized = jnp.zeros((), jnp.float32) if precision.int8 else None
        return jnp.full_like(param, fill, dtype=dtype), unquantized
    value = jnp.full_like(param, fill, dtype=dtype)  # full_like keeps param's sharding
    n_blocks = _quantize.num_blocks(param.shape[-1], precision.block_size)
    return write(value, _Layout(n_blocks, signed=not real))


def init_tree(
    params: Tree, fill: float, precision: StatePrecision, *, real: bool
) -> tuple[Tree, Tree | None]:
    """:func:`init` over ``params``: the values tree, and the scales tree (None unless int8)."""
    pairs = jax.tree_util.tree_map_with_path(
        lambda path, p: init(p, fill, precision, real=real, path=jax.tree_util.keystr(path)),
        params,
    )
    values, scales = _tree.unzip(params, pairs, 2)
    return values, scales if precision.int8 else None


def quantized(scales: jax.Array | None) -> bool:
    """Whether a buffer with these ``scales`` holds 8-bit codes."""
    return scales is not None and scales.ndim > 0


def scales_or_nones(scales: Tree | None, like: Tree) -> Tree:
    """A scales tree to map over beside ``like``: None at every leaf when there is none."""
    return _tree.nones_like(like) if scales is None else scales


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What :func:`write` needs of an existing buffer: its blocks and its map."""

    n_blocks: int
    signed: bool


def read(values: jax.Array, scales: jax.Array | None, dtype: np.dtype) -> jax.Array:
    """The buffer's values in ``dtype`` (complex for complex buffers)."""
    if not quantized(scales):
        return _dtypes.cast(values, dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):  # (re, im) on a trailing axis
        real = _dtypes.real_dtype(dtype)
        parts = [_quantize.dequantize(QuantizedArray(values[..., i], scales[..., i]), real)
                 for i in range(2)]  # fmt: skip
        return jax.lax.complex(*parts).astype(dtype)
    return _quantize.dequantize(QuantizedArray(values, scales), dtype)


def read_stored(values: jax.Array, scales: jax.Array | None, nu_values: jax.Array) -> jax.Array:
    """A state buffer as float32 (complex64) values if it holds codes, else unchanged.

    ``nu_values`` is the same parameter's ``nu`` buffer: ``nu`` is never
    complex, so codes with one more axis than it are a complex moment's
    (re, im) pair.
    """
    if not quantized(scales):
        return values
    complex_codes = values.ndim == nu_values.ndim + 1
    return read(values, scales, jnp.complex64 if complex_codes else jnp.float32)


def write(
    value: jax.Array, like: tuple[jax.Array, jax.Array | None] | _Layout
) -> tuple[jax.Array, jax.Array | None]:
    """``value`` stored as the buffer ``like`` is: same dtype, or re-quantized on its blocks."""
    if isinstance(like, _Layout):
        layout = like
    else:
        values, scales = like
        if not quantized(scales):
            return _dtypes.cast(value, values.dtype), scales
        n_blocks = scales.shape[-2 if jnp.iscomplexobj(value) else -1]
        layout = _Layout(n_blocks, signed=values.dtype == jnp.int8)
    if jnp.iscomplexobj(value):  # (re, im) on a trailing axis, each on the signed map
        parts = [
            _quantize.quantize(x, layout.n_blocks, signed=True) for x in (value.real, value.imag)
        ]
        return jnp.stack([q.codes for q in parts], -1), jnp.stack([q.scales for q in parts], -1)
    q = _quantize.quantize(value, layout.n_blocks, signed=layout.signed)
    return q.codes, q.scales
