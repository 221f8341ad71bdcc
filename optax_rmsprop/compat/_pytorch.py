"""``torch.optim.RMSprop``, step for step."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_rmsprop import _tree
from optax_rmsprop.compat import _common

Tree = Any


class PyTorchRMSpropState(NamedTuple):
    """State of :func:`pytorch`, named as in ``torch.optim.RMSprop.state``.

    Attributes:
      step: number of updates (int32 scalar; torch keeps a float32 tensor per param).
      square_avg: running average of the squared gradient, shaped like the params.
      grad_avg: running average of the gradient (``centered=True``), else None.
      momentum_buffer: the momentum buffer (``momentum > 0``), else None.
    """

    step: jax.Array
    square_avg: Tree
    grad_avg: Tree | None
    momentum_buffer: Tree | None


def init_torch_state(params: Tree, square_avg_init, *, centered: bool, momentum: float):
    """PyTorch-style lazy state, created eagerly: slots only for the options in use."""
    zeros = _common.zeros_like_tree(params)
    return PyTorchRMSpropState(
        step=jnp.zeros([], jnp.int32),
        square_avg=jax.tree.map(square_avg_init, params),
        grad_avg=zeros if centered else None,
        momentum_buffer=zeros if momentum > 0 else None,
    )


def torch_style_update(
    leaf,
    updates,
    state: PyTorchRMSpropState,
    params,
    *,
    where: str,
    lr,
    weight_decay: float,
    centered: bool,
    momentum: float,
) -> tuple[Tree, PyTorchRMSpropState]:
    """The shared frame of PyTorch-style updates: checks, slots, the per-leaf map, new state.

    ``leaf(g, p, square_avg, grad_avg, momentum_buffer, lr_t)`` returns
    ``(update, square_avg, grad_avg, momentum_buffer)`` (unused slots as None).
    """
    _common.check_structure(updates, state.square_avg, where)
    if weight_decay != 0:
        _common.require_params(params, where, f"weight_decay={weight_decay}")
    lr_t = _common.learning_rate_at(lr, state.step)
    none = jax.tree.map(lambda _: None, state.square_avg)
    out = jax.tree.map(
        lambda g, p, v, m, b: leaf(g, p, v, m, b, lr_t),
        updates,
        params if params is not None else none,
        state.square_avg,
        state.grad_avg if centered else none,
        state.momentum_buffer if momentum > 0 else none,
    )
    u, v, m, b = _tree.unzip(updates, out, 4)
    return u, PyTorchRMSpropState(
        step=optax.safe_int32_increment(state.step),
        square_avg=v,
        grad_avg=m if centered else None,
        momentum_buffer=b if momentum > 0 else None,
    )


def pytorch(
    lr: optax.ScalarOrSchedule = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.RMSprop(params, lr, alpha, eps, weight_decay, momentum, centered, maximize)``.

    Reproduces PyTorch's single-tensor (CPU) path in its order of operations:
    maximize, coupled L2 ``g + wd * p``, ``v = v * alpha + (1 - alpha) * g * g``,
    centered ``m = m.lerp(g, 1 - alpha)``, ``avg = sqrt(v [- m * m]) + eps``
    (eps **outside** the root), momentum ``b = b * mu + g / avg`` with the update
    ``-lr * b`` (lr **outside** the buffer), else ``-lr * g / avg``. Complex
    parameters are two real numbers each (``torch.view_as_real``), not one.

    Args:
      lr: learning rate, or an optax schedule standing in for a per-step
        ``torch.optim.lr_scheduler`` (called with the 0-based step).
      alpha: smoothing constant of the squared-gradient average.
      eps: added to the root, outside it.
      weight_decay: coupled L2 penalty (needs ``params`` in ``update``).
      momentum: momentum factor; 0 allocates no buffer, as in PyTorch.
      centered: normalise by the estimated variance.
      maximize: maximise the objective.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with a
      :class:`PyTorchRMSpropState`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from optax_rmsprop import compat
      >>> tx = compat.pytorch(lr=0.01, alpha=0.99)  # torch.optim.RMSprop(params, lr=0.01)
      >>> params = jnp.array([1.0, 2.0])
      >>> updates, state = tx.update(jnp.array([0.1, -0.2]), tx.init(params), params)
      >>> [round(float(u), 4) for u in updates]  # -lr * g / (sqrt(0.01 * g**2) + eps)
      [-0.1, 0.1]
    """
    _common.check_hyperparameters(
        lr_name="lr",
        lr=lr,
        decay_name="alpha",
        decay=alpha,
        eps_name="eps",
        eps=eps,
        momentum=momentum,
        weight_decay=weight_decay,
    )

    def init_fn(params):
        return init_torch_state(params, jnp.zeros_like, centered=centered, momentum=momentum)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args

        def leaf(g, p, v, m, b, lr_t):
            like = g
            g = -g if maximize else g
            if weight_decay != 0:
                g = g + _common.cast(weight_decay, g) * p
            g, v = _common.to_real(g), _common.to_real(v)
            v = v * _common.cast(alpha, v) + _common.cast(1 - alpha, v) * (g * g)
            if centered:
                m = _common.to_real(m)
                m = m + _common.cast(1 - alpha, m) * (g - m)  # lerp(m, g, w), w < 0.5
                avg = jnp.sqrt(v - m * m)
            else:
                avg = jnp.sqrt(v)
            avg = avg + _common.cast(eps, avg)
            neg_lr = _common.cast(-lr_t, avg)
            if momentum > 0:
                b = _common.to_real(b) * _common.cast(momentum, avg) + g / avg
                u = neg_lr * b
            else:
                u = neg_lr * (g / avg)
            back = lambda x: None if x is None else _common.from_real(x, like)  # noqa: E731
            return (
                back(u),
                back(v),
                back(m if centered else None),
                back(b if momentum > 0 else None),
            )

        return torch_style_update(
            leaf,
            updates,
            state,
            params,
            where="compat.pytorch update",
            lr=lr,
            weight_decay=weight_decay,
            centered=centered,
            momentum=momentum,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
