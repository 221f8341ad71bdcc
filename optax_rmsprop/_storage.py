"""How each per-parameter state buffer is stored: a floating array, or 8-bit codes.

``nu``, ``mu`` and the momentum buffer are read into the dtype the update is
computed in, updated there, and written back in their storage format. Each
buffer has one :class:`Layout`, fixed when the state is created from the
parameter's shape and dtype, the :class:`StatePrecision` and the buffer's role:

* a floating array, of ``state_dtype`` or, by default, the parameter's dtype
  but at least float32 (:mod:`optax_rmsprop._dtypes`);
* with ``state_dtype="int8"``, block-quantized 8-bit codes
  (:mod:`optax_rmsprop._quantize`): ``nu`` on the zero-free ``NU`` map, first
  moments on the ``SIGNED`` map, a complex moment as its real and imaginary
  parts on a trailing axis of 2. Leaves with fewer than ``min_quantized_size``
  elements, and scalars, stay as the default policy keeps them: they cost
  little and are often biases and norms.

A buffer is stored as two arrays at its parameter's position in two parallel
trees: ``values`` (the float array, or the codes, shaped like the parameter)
and ``absmax`` (the float32 per-block absmax of the codes; for a float buffer
None, or in an 8-bit state a float32 scalar 0, so that every position holds an
array that checkpointers can save). So every state leaf is a plain array, as
``nnx.Optimizer``, ``optax.tree.map_params`` and checkpointers expect.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_rmsprop import _dtypes, _jax_versions, _quantize, _tree
from optax_rmsprop._quantize import Codebook
from optax_rmsprop._tree import Tree

INT8 = "int8"
_ALLOWED = "None, a floating dtype (float16, bfloat16, float32, float64) or 'int8'"


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

    @classmethod
    def from_args(
        cls, state_dtype: Any, block_size: Any = None, min_quantized_size: Any = None
    ) -> StatePrecision:
        """``state_dtype`` and the 8-bit settings as the user gives them, checked.

        Raises:
          ValueError: naming the argument, for a ``state_dtype`` that is not
            None, a floating dtype or ``"int8"``, or 8-bit settings that are
            not positive integers or come without ``"int8"``.
        """
        int8 = _is_int8(state_dtype)
        for name, value in (("block_size", block_size), ("min_quantized_size", min_quantized_size)):
            if value is None:
                continue
            if not int8:
                raise ValueError(
                    f"{name} applies to state_dtype='int8' only, got {name}={value!r} with "
                    f"state_dtype={state_dtype!r}."
                )
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if int8:
            return cls(
                int8=True,
                block_size=int(block_size or cls.block_size),
                min_size=int(min_quantized_size or cls.min_size),
            )
        return cls(dtype=_floating_dtype(state_dtype))

    def layout(self, param: jax.Array, *, real: bool, path: str = "") -> Layout:
        """The layout of a buffer for ``param``: ``real`` for ``nu``, else a first moment."""
        dtype_of = _dtypes.nu_dtype if real else _dtypes.moment_dtype
        dtype = dtype_of(param.dtype, self.dtype, path)  # also rejects integer params
        if not (self.int8 and param.ndim >= 1 and param.size >= self.min_size):
            return Layout(dtype)
        n_blocks = _quantize.num_blocks(param.shape[-1], self.block_size)
        return Layout(dtype, _quantize.NU if real else _quantize.SIGNED, n_blocks)


def _is_int8(state_dtype: Any) -> bool:
    if isinstance(state_dtype, str):
        return state_dtype == INT8
    try:
        return state_dtype is not None and jnp.dtype(state_dtype) == jnp.int8
    except TypeError:
        return False


def _floating_dtype(state_dtype: Any) -> np.dtype | None:
    if state_dtype is None:
        return None
    try:
        dtype = jnp.dtype(state_dtype)
    except TypeError as err:
        raise ValueError(f"state_dtype must be {_ALLOWED}, got {state_dtype!r}.") from err
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"state_dtype must be {_ALLOWED}, got {dtype.name}. Complex parameters get "
            f"complex momentum buffers of the matching precision automatically."
        )
    return dtype


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one buffer is stored.

    Attributes:
      dtype: the dtype of the values the buffer stands for: the float array's
        own dtype, or float32 / complex64 for codes.
      codebook: the 8-bit map of the codes, or None for a float array.
      n_blocks: quantization blocks along the last axis (codes only).
    """

    dtype: np.dtype
    codebook: Codebook | None = None
    n_blocks: int = 0

    @property
    def quantized(self) -> bool:
        return self.codebook is not None

    @property
    def complex(self) -> bool:
        return jnp.issubdtype(self.dtype, jnp.complexfloating)

    @classmethod
    def of_stored(
        cls, values: jax.Array, absmax: jax.Array | None, *, real: bool, param_ndim: int
    ) -> Layout:
        """The layout of stored arrays, for readers that hold a state but no optimizer."""
        if absmax is None or absmax.ndim == 0:
            return cls(values.dtype)
        complex_codes = values.ndim == param_ndim + 1  # (re, im) on a trailing axis
        dtype = jnp.dtype(jnp.complex64 if complex_codes else jnp.float32)
        codebook = _quantize.NU if real else _quantize.SIGNED
        return cls(dtype, codebook, absmax.shape[-2 if complex_codes else -1])

    def init(self, param: jax.Array, fill: Any, absmax_placeholder: bool) -> tuple:
        """``(values, absmax)`` of a buffer filled with ``fill``, written directly.

        A constant block's codes are its top code and its absmax is ``|fill|``,
        so nothing is quantized (and XLA folds no constant). ``fill`` is ``>= 0``.
        """
        if not self.quantized:
            placeholder = jnp.zeros((), jnp.float32) if absmax_placeholder else None
            return jnp.full_like(param, fill, dtype=self.dtype), placeholder
        # nu's fill (>= 0) is its block's absmax: the top code; first moments start at 0.
        # Built from full_like(param), so that they shard like it (explicit sharding too).
        code = 0 if self.codebook.signed else len(self.codebook.magnitudes) - 1
        codes = jnp.full_like(param, code, dtype=self.codebook.code_dtype)
        blocks = (*param.shape[:-1], self.n_blocks)
        absmax = _jax_versions.shard_like(jnp.full(blocks, fill, jnp.float32), param)
        if self.complex:  # (re, im) on a trailing axis; fill is real
            return jnp.stack([codes, codes], -1), jnp.stack([absmax, jnp.zeros_like(absmax)], -1)
        return codes, absmax

    def read(self, values: jax.Array, absmax: jax.Array | None, dtype: np.dtype) -> jax.Array:
        """The buffer's values in ``dtype`` (complex for complex buffers)."""
        if not self.quantized:
            return _dtypes.cast(values, dtype)
        if self.complex:
            real = _dtypes.real_dtype(dtype)
            re, im = (self._decode(values[..., i], absmax[..., i], real) for i in range(2))
            return jax.lax.complex(re, im).astype(dtype)
        return self._decode(values, absmax, dtype)

    def write(self, value: jax.Array, absmax: jax.Array | None) -> tuple:
        """``value`` in this layout: ``(values, absmax)``; the absmax is recomputed."""
        if not self.quantized:
            return _dtypes.cast(value, self.dtype), absmax
        if self.complex:
            parts = [self._encode(x) for x in (value.real, value.imag)]
            return tuple(jnp.stack(arrays, -1) for arrays in zip(*parts, strict=True))
        return self._encode(value)

    def _decode(self, codes: jax.Array, absmax: jax.Array, dtype: np.dtype) -> jax.Array:
        return _quantize.decode_blocks(codes, absmax, self.codebook).astype(dtype)

    def _encode(self, value: jax.Array) -> tuple[jax.Array, jax.Array]:
        absmax = _quantize.block_absmax(value, self.n_blocks)
        return _quantize.encode_blocks(value, absmax, self.codebook), absmax


# -- whole trees ----------------------------------------------------------------------
def layouts(params: Tree, precision: StatePrecision, *, real: bool) -> Tree:
    """The :class:`Layout` of each parameter's buffer (a tree of static leaves)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: precision.layout(p, real=real, path=jax.tree_util.keystr(path)), params
    )


def init_tree(
    params: Tree, fill: Any, precision: StatePrecision, *, real: bool
) -> tuple[Tree, Tree | None]:
    """The values tree and the absmax tree (None unless int8) of a buffer filled with ``fill``."""
    pairs = jax.tree.map(
        lambda p, layout: layout.init(p, fill, precision.int8),
        params,
        layouts(params, precision, real=real),
    )
    values, absmax = _tree.unzip(params, pairs, 2)
    return values, absmax if precision.int8 else None


def read_tree(values: Tree, absmax: Tree | None, layout_tree: Tree, dtypes: Tree) -> Tree:
    """Every buffer of a tree read in its compute dtype (``dtypes``: one dtype per leaf)."""
    absmax = _tree.nones_like(values) if absmax is None else absmax
    return jax.tree.map(
        lambda layout, v, a, d: layout.read(v, a, d),
        layout_tree,
        values,
        absmax,
        dtypes,
        is_leaf=is_layout,
    )


def write_tree(new: Tree, absmax: Tree | None, layout_tree: Tree) -> tuple[Tree, Tree | None]:
    """``new`` (compute-dtype values) written in each leaf's layout: ``(values, absmax)``."""
    old = _tree.nones_like(new) if absmax is None else absmax
    pairs = jax.tree.map(
        lambda layout, v, a: layout.write(v, a), layout_tree, new, old, is_leaf=is_layout
    )
    values, new_absmax = _tree.unzip(new, pairs, 2)
    return values, None if absmax is None else new_absmax


def stored_layouts(values: Tree, absmax: Tree | None, nu: Tree, *, real: bool) -> Tree:
    """:meth:`Layout.of_stored` over a state's trees (``nu`` gives each parameter's rank)."""
    absmax = _tree.nones_like(values) if absmax is None else absmax
    return jax.tree.map(
        lambda v, a, n: Layout.of_stored(v, a, real=real, param_ndim=n.ndim), values, absmax, nu
    )


def is_layout(x: Any) -> bool:
    return isinstance(x, Layout)
