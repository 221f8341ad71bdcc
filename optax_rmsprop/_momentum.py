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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from optax_rmsprop import _dtypes, _storage, _xla_hints
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
    rescale: Callable[[Tree], Tree] | None = None,
    raw: Tree | None = None,
) -> tuple[Tree, Tree, Tree | None]:
    """Returns ``(step, new_buffer, new_buffer_absmax)``; the buffer keeps its layout.

    The step uses the new buffer as stored (8-bit codes, bfloat16: read back;
    :func:`_read_back`), as PyTorch's in-place update of a low-precision
    buffer does: the parameters move by the buffer the state holds.

    ``layouts`` and ``buffer_absmax`` say how the buffer is stored
    (:mod:`optax_rmsprop._storage`). ``rescale(raw)``, if given, computes
    ``scaled`` afresh from the raw gradients ``raw``; it is called on two
    copies of them (:func:`~optax_rmsprop._xla_hints.identity`, which XLA
    merges with nothing): a buffer stored otherwise than it is computed is then
    written from values computed apart, one per pass over it (the absmax, the
    codes), so that no float32 copy of ``scaled`` or of the new buffer is kept
    at the step's peak, for a division and a square root per pass.
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
    if rescale is None or all(jax.tree.leaves(stored_as_computed)):
        values, absmax = _storage.write_tree(new, buffer_absmax, layouts)
    else:
        copies = (jax.tree.map(lambda u, c=c: _xla_hints.identity(u, c), raw) for c in (1, 2))
        first, second = (updated(rescale(copy)) for copy in copies)
        pick = functools.partial(
            jax.tree.map, lambda same, x, y: x if same else y, stored_as_computed
        )
        values, absmax = _storage.write_tree(
            pick(new, first), buffer_absmax, layouts, pick(new, second)
        )
    values, used = _as_used(values, absmax, new, layouts, dtypes)
    return jax.tree.map(step, scaled, used), values, absmax


def _as_used(values: Tree, absmax: Tree | None, new: Tree, layouts: Tree, dtypes: Tree) -> tuple:
    """``(values, used)``: the stored buffer (kept where read back) and the buffer the step
    uses, as stored where :func:`_read_back` says so, else as computed (``new``)."""
    read_back = jax.tree.map(_read_back, layouts, dtypes, is_leaf=_storage.is_layout)
    kept = jax.tree.map(_kept, layouts, read_back, is_leaf=_storage.is_layout)
    values = jax.tree.map(lambda v, keep: _xla_hints.kept(v) if keep else v, values, kept)
    stored = _storage.read_tree(values, absmax, layouts, dtypes)
    return values, jax.tree.map(lambda back, x, y: x if back else y, read_back, stored, new)


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
    """Whether the readers of a buffer read back load it from memory (``_xla_hints.kept``).

    8-bit codes: always (else XLA recomputes them inside the parameter update,
    from float32 values it writes out). bfloat16 and float16: only where XLA
    needs it (before jaxlib 0.9.1, :func:`_xla_hints.keeps_read_back`);
    newer XLA fuses the rounded buffer into the update with no copy at all.
    """
    if not read_back:
        return False
    return layout.quantized or _xla_hints.keeps_read_back()


def _as_real(value: ArrayLike, like: jax.Array) -> ArrayLike:
    """Python numbers stay weakly typed; anything else is cast to the leaf's real dtype."""
    if _dtypes.is_weak_scalar(value):
        return value
    return _dtypes.cast(value, _dtypes.real_dtype(like.dtype))


def moments_written_after(
    rms: Any, buffer: Tree, nu_layouts: Tree, mu_layouts: Tree, grads: Tree
) -> Any:
    """The RMS state with its new ``nu`` and ``mu`` written after the momentum buffer
    (and ``mu`` after ``nu``: a centered quantized ``nu`` reads the old ``mu``)."""
    dtypes = jax.tree.map(lambda g: g.dtype, grads)  # the compute dtypes
    nu = _written_after(rms.nu, buffer, nu_layouts, dtypes, real=True)
    mu = _written_after(rms.mu, buffer, mu_layouts, dtypes, real=False, also=nu)
    return rms._replace(nu=nu, mu=mu)


def _written_after(
    moment: Tree | None,
    buffer: Tree,
    layouts: Tree,
    dtypes: Tree,
    *,
    real: bool,
    also: Tree | None = None,
) -> Tree | None:
    """``moment`` (the new ``nu`` or ``mu``, as stored), written after the momentum buffer.

    The passes that write the momentum buffer read the old moment (through
    ``g / denom``), and the new moment overwrites the old one in place: where
    XLA cannot order the two, it keeps a copy of the old moment (1 byte per
    parameter for 8-bit codes). ``also``: a second tree of arrays to write
    after, where its shapes match. A moment stored as it is computed (float32
    state) is updated in the same fusion as the buffer, and is left alone.
    """
    if moment is None:
        return None
    also = moment if also is None else also

    def leaf(m, b, layout, d, a):
        dtype = _dtypes.real_dtype(d) if real else d
        if layout.stores_as_computed(dtype):
            return m
        ordered = _xla_hints.after(m, b)
        if a is m or not layout.quantized or jnp.shape(a) != jnp.shape(m):
            return ordered
        return _xla_hints.after(ordered, a)

    return jax.tree.map(leaf, moment, buffer, layouts, dtypes, also, is_leaf=_storage.is_layout)
