"""The momentum buffer, with the learning rate inside it or outside it.

* ``lr_in_momentum=True`` (optax, TensorFlow, Keras): ``b = mu*b + lr*s``,
  step ``b`` (Nesterov: ``lr*s + mu*b``).
* ``lr_in_momentum=False`` (PyTorch): ``b = mu*b + s``, step ``lr*b``
  (Nesterov: ``lr*(s + mu*b)``).

Both are the same for a constant learning rate and differ under a schedule.
"""

from __future__ import annotations

from typing import Any

import jax

from optax_rmsprop import _dtypes, _tree

Tree = Any


def scale_by_lr(scaled: Tree, learning_rate: Any) -> Tree:
    """``lr * s`` per leaf, with lr cast to the leaf's real dtype."""
    return jax.tree.map(lambda s: s * _as_real(learning_rate, s), scaled)


def momentum_step(
    scaled: Tree,
    buffer: Tree,
    learning_rate: Any,
    momentum: Any,
    *,
    nesterov: bool,
    lr_in_momentum: bool,
) -> tuple[Tree, Tree]:
    """Returns ``(step, new_buffer)``; the buffer keeps its dtype."""

    def leaf(s, b):
        lr = _as_real(learning_rate, s)
        mu = _as_real(momentum, s)
        b_old = _dtypes.cast(b, s.dtype)
        if lr_in_momentum:
            b_new = mu * b_old + lr * s
            step = lr * s + mu * b_new if nesterov else b_new
        else:
            b_new = mu * b_old + s
            step = lr * (s + mu * b_new) if nesterov else lr * b_new
        return step, _dtypes.cast(b_new, b.dtype)

    out = jax.tree.map(leaf, scaled, buffer)
    return _tree.unzip(scaled, out, 2)


def _as_real(value: Any, like: jax.Array) -> Any:
    """Python numbers stay weakly typed; arrays are cast to the leaf's real dtype."""
    if isinstance(value, (int, float)):
        return value
    return _dtypes.cast(value, _dtypes.real_dtype(like.dtype))
