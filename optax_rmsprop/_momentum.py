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
    buffer_absmax: Tree | None,
    layouts: Tree,
    learning_rate: ArrayLike,
    momentum: ArrayLike,
    *,
    nesterov: bool,
    lr_in_momentum: bool,
) -> tuple[Tree, Tree, Tree | None]:
    """Returns ``(step, new_buffer, new_buffer_absmax)``; the buffer keeps its layout.

    ``layouts`` and ``buffer_absmax`` say how the buffer is stored
    (:mod:`optax_rmsprop._storage`).
    """
    dtypes = jax.tree.map(lambda s: s.dtype, scaled)
    old = _storage.read_tree(buffer, buffer_absmax, layouts, dtypes)

    def leaf(s, b):
        lr = _as_real(learning_rate, s)
        mu = _as_real(momentum, s)
        if lr_in_momentum:
            b = mu * b + lr * s
            return (lr * s + mu * b if nesterov else b), b
        b = mu * b + s
        return (lr * (s + mu * b) if nesterov else lr * b), b

    step, new = _tree.unzip(scaled, jax.tree.map(leaf, scaled, old), 2)
    return step, *_storage.write_tree(new, buffer_absmax, layouts)


def _as_real(value: ArrayLike, like: jax.Array) -> ArrayLike:
    """Python numbers stay weakly typed; anything else is cast to the leaf's real dtype."""
    if _dtypes.is_weak_scalar(value):
        return value
    return _dtypes.cast(value, _dtypes.real_dtype(like.dtype))
