"""timm's ``RMSpropTF``: PyTorch's RMSprop rewritten to match TensorFlow."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from optax_rmsprop.compat import _common


def timm_kernel(
    g,
    p,
    v,
    m,
    b,
    lr_t,
    *,
    alpha,
    eps,
    weight_decay,
    momentum,
    centered,
    decoupled_decay,
    lr_in_momentum,
) -> tuple:
    """timm's ``RMSpropTF`` step for one parameter: ``(update, v, m, b)``, unused slots None."""
    decay_step = None
    if weight_decay != 0:
        if decoupled_decay:
            # timm: param.mul_(1. - lr * weight_decay), the factor in float64
            decay_step = p * _common.as_dtype_of(1.0 - lr_t * weight_decay, p) - p
        else:
            g = g + _common.as_dtype_of(weight_decay, g) * p
    w = _common.as_dtype_of(1.0 - alpha, v)
    v = v + w * (g * g - v)
    if centered:
        m = m + w * (g - m)
        avg = jnp.sqrt(v - m * m + _common.as_dtype_of(eps, v))
    else:
        avg = jnp.sqrt(v + _common.as_dtype_of(eps, v))
    lr_c = _common.as_dtype_of(lr_t, v)
    if momentum > 0:
        b = b * _common.as_dtype_of(momentum, v)
        if lr_in_momentum:
            b = b + lr_c * (g / avg)
            u = -b
        else:
            b = b + g / avg
            u = -lr_c * b
    else:
        u = -lr_c * (g / avg)
    if decay_step is not None:
        u = decay_step + u
    return u, v, m, b


def timm(
    lr: optax.ScalarOrSchedule = 1e-2,
    alpha: float = 0.9,
    eps: float = 1e-10,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    decoupled_decay: bool = False,
    lr_in_momentum: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """``timm.optim.RMSpropTF(params, lr, alpha, eps, weight_decay, momentum, ...)``.

    timm's TF-matching variant: the mean square starts at **1**, eps sits
    **inside** the root, ``v += (g*g - v) * (1 - alpha)`` (TF's order), and
    the learning rate sits inside the momentum buffer unless
    ``lr_in_momentum=False``. Weight decay is coupled L2 (``g + wd * p``) or,
    with ``decoupled_decay``, ``p *= 1 - lr * wd`` before the step. (timm's
    factory ``create_optimizer_v2('rmsproptf')`` also defaults momentum to 0.9;
    pass it explicitly here.)

    Args:
      lr: learning rate, or an optax schedule of the 0-based step.
      alpha: smoothing constant of the mean square.
      eps: added inside the root.
      weight_decay: L2 factor (needs ``params``).
      momentum: momentum factor; 0 allocates no buffer.
      centered: normalise by the estimated variance.
      decoupled_decay: decay the weights directly instead of the gradient.
      lr_in_momentum: accumulate ``lr``-scaled steps in the buffer (TF).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`PyTorchRMSpropState` (timm keeps torch's slot names).

    Example:
      >>> import jax.numpy as jnp
      >>> from optax_rmsprop import compat
      >>> tx = compat.timm(lr=0.1, alpha=0.9)
      >>> g = jnp.array([3.0])
      >>> u, _ = tx.update(g, tx.init(g))
      >>> round(float(u[0]), 5)  # the mean square starts at 1: -0.1 * 3 / sqrt(1 + (9 - 1) * 0.1)
      -0.22361
    """
    # timm starts the mean square at ones ("PyTorch inits to zero")
    return _common.torch_style(
        timm_kernel, square_avg_init=jnp.ones_like, where="compat.timm update",
        lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
        centered=centered, decoupled_decay=decoupled_decay, lr_in_momentum=lr_in_momentum,
    )  # fmt: skip
