"""The momentum buffer, with the learning rate inside it or outside it.

* ``lr_in_momentum=True`` (optax, TensorFlow, Keras): ``b = mu*b + lr*s``,
  step ``b`` (Nesterov: ``lr*s + mu*b``).
* ``lr_in_momentum=False`` (PyTorch): ``b = mu*b + s``, step ``lr*b``
  (Nesterov: ``lr*(s + mu*b)``).

Both are the same for a constant learning rate and differ under a schedule.
"""

from __future__ import annotations

import jax
from jax.typing import ArrayLike

from optax_rmsprop import _dtypes, _storage, _tree
from optax_rmsprop._tree import Tree


def scale_by_lr(scaled: Tree, learning_rate: ArrayLike) -> Tree:
    """``lr * s`` per leaf, with lr cast to the leaf's real dtype."""
    return jax.tree.map(lambda s: s * _as_real(learning_rate, s), scaled)


def momentum_step(
    scaled: Tree,
    buffer: Tree,
    buffer_scales: Tree | None,
    learning_rate: ArrayLike,
    momentum: ArrayLike,
    *,
    nesterov: bool,
    lr_in_momentum: bool,
) -> tuple[Tree, Tree, Tree | None]:
    """Returns ``(step, new_buffer, new_buffer_scales)``; the buffer keeps its storage.

    ``buffer_scales`` is None, or the per-block scales of an 8-bit buffer
    (:mod:`optax_rmsprop._storage`).
    """

    def leaf(s, b, b_scales):
        lr = _as_real(learning_rate, s)
        mu = _as_real(momentum, s)
        b_old = _storage.read(b, b_scales, s.dtype)
        if lr_in_momentum:
            b_new = mu * b_old + lr * s
            step = lr * s + mu * b_new if nesterov else b_new
        else:
            b_new = mu * b_old + s
            step = lr * (s + mu * b_new) if nesterov else lr * b_new
        return step, *_storage.write(b_new, (b, b_scales))

    out = jax.tree.map(leaf, scaled, buffer, _storage.scales_or_nones(buffer_scales, scaled))
    step, new_buffer, new_scales = _tree.unzip(scaled, out, 3)
    return step, new_buffer, None if buffer_scales is None else new_scales


def _as_real(value: ArrayLike, like: jax.Array) -> ArrayLike:
    """Python numbers stay weakly typed; anything else is cast to the leaf's real dtype."""
    if _dtypes.is_weak_scalar(value):
        return value
    return _dtypes.cast(value, _dtypes.real_dtype(like.dtype))
