"""``torch.optim.RMSprop``, step for step."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from optax_rmsprop.compat import _common
from optax_rmsprop.compat._common import PyTorchRMSpropState as PyTorchRMSpropState


def pytorch_kernel(
    g, p, v, m, b, lr_t, *, alpha, eps, weight_decay, momentum, centered, maximize
) -> tuple:
    """PyTorch's single-tensor RMSprop for one parameter, in its order of operations.

    ``g``, ``p``: gradient and parameter; ``v``, ``m``, ``b``: ``square_avg``,
    ``grad_avg`` and ``momentum_buffer`` (None when unused); ``lr_t``: this
    step's learning rate. Complex tensors are computed as two reals each, as
    ``torch.view_as_real`` does. Returns ``(update, v, m, b)``.
    """
    like = g
    g = -g if maximize else g
    if weight_decay != 0:
        g = g + _common.as_dtype_of(weight_decay, g) * p
    g, v = _common.to_real(g), _common.to_real(v)
    v = v * _common.as_dtype_of(alpha, v) + _common.as_dtype_of(1 - alpha, v) * (g * g)
    if centered:
        m = _common.to_real(m)
        m = m + _common.as_dtype_of(1 - alpha, m) * (g - m)  # lerp(m, g, w), w < 0.5
        avg = jnp.sqrt(v - m * m)
    else:
        avg = jnp.sqrt(v)
    avg = avg + _common.as_dtype_of(eps, avg)
    neg_lr = _common.as_dtype_of(-lr_t, avg)
    if momentum > 0:
        b = _common.to_real(b) * _common.as_dtype_of(momentum, avg) + g / avg
        u = neg_lr * b
    else:
        u = neg_lr * (g / avg)
    back = lambda x: None if x is None else _common.from_real(x, like)  # noqa: E731
    return back(u), back(v), back(m if centered else None), back(b if momentum > 0 else None)


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
    return _common.torch_style(
        pytorch_kernel, square_avg_init=jnp.zeros_like, where="compat.pytorch update",
        lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
        centered=centered, maximize=maximize,
    )  # fmt: skip
