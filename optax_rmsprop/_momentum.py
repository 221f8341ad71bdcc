"""The momentum buffer, with the learning rate inside it or outside it.

* ``lr_in_momentum=True`` (optax, TensorFlow, Keras): ``b = mu*b + lr*s``,
  step ``b`` (Nesterov: ``lr*s + mu*b``).
* ``lr_in_momentum=False`` (PyTorch): ``b = mu*b + s``, step ``lr*b``
  (Nesterov: ``lr*(s + mu*b)``).

Both are the same for a constant learning rate and differ under a schedule.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
from jax.typing import ArrayLike

from optax_rmsprop import _dtypes, _jax_versions, _opaque, _storage
from optax_rmsprop._tree import Tree


def scale_by_lr(scaled: Tree, learning_rate: ArrayLike) -> Tree:
    """``lr * s`` per leaf, with lr cast to the leaf's real dtype."""
    return jax.tree.map(lambda s: s * _as_real(learning_rate, s), scaled)


def momentum_step(
    scaled: Tree,
    buffer: Tree,
    buffer_absmax: Tree | None,
    layouts: Tree,
    learning_rate: ArrayLike,
    momentum: ArrayLike,
    *,
    nesterov: bool,
    lr_in_momentum: bool,
    rescaled: Callable[[int], Tree] | None = None,
) -> tuple[Tree, Tree, Tree | None]:
    """Returns ``(step, new_buffer, new_buffer_absmax)``; the buffer keeps its layout.

    The step uses the new buffer as stored (8-bit codes, bfloat16: read back;
    :func:`_read_back`), as PyTorch's in-place update of a low-precision
    buffer does: the parameters move by the buffer the state holds.

    ``layouts`` and ``buffer_absmax`` say how the buffer is stored
    (:mod:`optax_rmsprop._storage`). ``rescaled(copy)``, if given, computes
    ``scaled`` afresh, from its own copy of the gradients (``copy`` 1 or 2,
    :mod:`optax_rmsprop._opaque`: XLA merges no two of them): a buffer stored
    otherwise than it is computed is then written from values computed apart,
    one computation per pass over it (the absmax, the codes), so that no
    float32 copy of ``scaled`` or of the new buffer is kept at the step's
    peak. It costs those passes a division and a square root each.
    """
    dtypes = jax.tree.map(lambda s: s.dtype, scaled)
    old = _storage.read_tree(buffer, buffer_absmax, layouts, dtypes)

    def updated(scaled: Tree) -> Tree:
        return jax.tree.map(new_buffer, scaled, old)

    def new_buffer(s, b):
        mu = _as_real(momentum, s)
        return mu * b + (_as_real(learning_rate, s) * s if lr_in_momentum else s)

    def step(s, b):
        lr = _as_real(learning_rate, s)
        mu = _as_real(momentum, s)
        if lr_in_momentum:
            return lr * s + mu * b if nesterov else b
        return lr * (s + mu * b) if nesterov else lr * b

    new = updated(scaled)
    stored_as_computed = jax.tree.map(
        lambda layout, d: layout.stores_as_computed(d), layouts, dtypes, is_leaf=_storage.is_layout
    )
    if rescaled is None or all(jax.tree.leaves(stored_as_computed)):
        values, absmax = _storage.write_tree(new, buffer_absmax, layouts)
    else:
        first, second = (updated(rescaled(copy)) for copy in (1, 2))
        pick = functools.partial(
            jax.tree.map, lambda same, x, y: x if same else y, stored_as_computed
        )
        values, absmax = _storage.write_tree(
            pick(new, first), buffer_absmax, layouts, pick(new, second)
        )
    read_back = jax.tree.map(_read_back, layouts, dtypes, is_leaf=_storage.is_layout)
    kept = jax.tree.map(_kept, layouts, read_back, is_leaf=_storage.is_layout)
    values = jax.tree.map(lambda v, keep: _opaque.kept(v) if keep else v, values, kept)
    stored = _storage.read_tree(values, absmax, layouts, dtypes)
    used = jax.tree.map(lambda back, x, y: x if back else y, read_back, stored, new)
    return jax.tree.map(step, scaled, used), values, absmax


def _read_back(layout: _storage.Layout, dtype: np.dtype) -> bool:
    """Whether the step uses the new buffer as stored, read back from memory.

    Yes for 8-bit codes and a lower float precision (bfloat16, float16): the
    parameter update then reads the new buffer, never the old one, and XLA
    overwrites the old one in place (:func:`_kept` says where the readers
    must load the stored values rather than recompute them). Not for 4-bit codes, whose 8
    magnitudes would round each step by up to 0.11 of the block's absmax (the
    step uses the buffer as computed), nor for a buffer stored as computed.
    """
    if layout.stores_as_computed(dtype):
        return False
    return not (layout.quantized and layout.codebook.packed)


def _kept(layout: _storage.Layout, read_back: bool) -> bool:
    """Whether the readers of a buffer read back load it from memory (:func:`_opaque.kept`).

    8-bit codes: always (else XLA recomputes them inside the parameter update,
    from float32 values it writes out). bfloat16 and float16: only where XLA
    needs it (before jaxlib 0.9.1, :data:`_jax_versions.FUSES_ROUNDED_READ_BACK`);
    newer XLA fuses the rounded buffer into the update with no copy at all.
    """
    if not read_back:
        return False
    return layout.quantized or not _jax_versions.FUSES_ROUNDED_READ_BACK


def _as_real(value: ArrayLike, like: jax.Array) -> ArrayLike:
    """Python numbers stay weakly typed; anything else is cast to the leaf's real dtype."""
    if _dtypes.is_weak_scalar(value):
        return value
    return _dtypes.cast(value, _dtypes.real_dtype(like.dtype))
