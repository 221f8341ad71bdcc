"""timm's ``RMSpropTF``: PyTorch's RMSprop rewritten to match TensorFlow."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from optax_rmsprop._caution import cautious
from optax_rmsprop.compat import _common
from optax_rmsprop.compat._frame import Leaf, Slots
from optax_rmsprop.compat._pytorch import torch_style


@dataclasses.dataclass(frozen=True)
class TimmStep:
    """timm's single-tensor ``RMSpropTF`` step for one parameter (see :func:`timm`)."""

    alpha: float
    eps: float
    weight_decay: float
    momentum: float
    centered: bool
    decoupled_decay: bool
    lr_in_momentum: bool
    caution: bool

    def __call__(self, leaf: Leaf, lr: jax.Array) -> tuple[jax.Array, Slots]:
        g, p, v = leaf.grad, leaf.param, leaf.slots.square
        decoupled = self.weight_decay != 0 and self.decoupled_decay
        if self.weight_decay != 0 and not decoupled:
            g = g + _common.as_dtype_of(self.weight_decay, g) * p
        w = _common.as_dtype_of(1.0 - self.alpha, v)
        v = v + w * (g * g - v)
        m = None
        if self.centered:
            m = leaf.slots.grad_avg + w * (g - leaf.slots.grad_avg)
            avg = jnp.sqrt(v - m * m + _common.as_dtype_of(self.eps, v))
        else:
            avg = jnp.sqrt(v + _common.as_dtype_of(self.eps, v))
        lr_c = _common.as_dtype_of(lr, v)
        b = None
        if self.momentum > 0:
            b = leaf.slots.momentum * _common.as_dtype_of(self.momentum, v)
            b = b + lr_c * (g / avg) if self.lr_in_momentum else b + g / avg
            step = cautious(b, g) if self.caution else b  # the buffer itself stays unmasked
            u = -step if self.lr_in_momentum else -lr_c * step
        else:
            u = -lr_c * (g / avg)
        if decoupled:
            # timm: p.mul_(1 - lr * wd) before the step; the factor in float64.
            # (p * factor + u) - p is exact where the two are within 2x (Sterbenz).
            factor = _common.as_dtype_of(1.0 - lr * self.weight_decay, p)
            u = (p * factor + u) - p
        return u, Slots(v, m, b)


def timm(
    lr: optax.ScalarOrSchedule = 1e-2,
    alpha: float = 0.9,
    eps: float = 1e-10,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    decoupled_decay: bool = False,
    lr_in_momentum: bool = True,
    caution: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``timm.optim.RMSpropTF(params, lr, alpha, eps, weight_decay, momentum, ...)``.

    timm's TF-matching variant: the mean square starts at **1**, eps sits
    **inside** the root, ``v += (g*g - v) * (1 - alpha)`` (TF's order), and
    the learning rate sits inside the momentum buffer unless
    ``lr_in_momentum=False``. Weight decay is coupled L2 (``g + wd * p``) or,
    with ``decoupled_decay``, ``p *= 1 - lr * wd`` before the step. (timm's
    factory ``create_optimizer_v2('rmsproptf')`` also defaults momentum to 0.9;
    pass it explicitly here.)

    ``caution=True`` is timm's cautious variant (``create_optimizer_v2('crmsproptf')``,
    after "Cautious Optimizers"): with momentum, the step taken is the buffer
    masked to the components whose sign agrees with the gradient's (after
    coupled L2), divided by the kept fraction of the tensor (at least 1e-3);
    the buffer itself is kept unmasked. Without momentum it changes nothing, as
    in timm.

    Args:
      lr: learning rate, or an optax schedule of the 0-based step.
      alpha: smoothing constant of the mean square, in [0, 1].
      eps: added inside the root, >= 0.
      weight_decay: L2 factor, >= 0 (needs ``params``).
      momentum: momentum factor in [0, 1); 0 allocates no buffer.
      centered: normalise by the estimated variance.
      decoupled_decay: decay the weights directly instead of the gradient.
      lr_in_momentum: accumulate ``lr``-scaled steps in the buffer (TF).
      caution: mask the momentum step where it disagrees with the gradient.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`PyTorchRMSpropState` (timm keeps torch's slot names).

    Raises:
      ValueError: at construction, for a value out of its range, a callable
        other than ``lr``, or a non-bool flag, under timm's name of the argument.

    References:
      Liang et al., `Cautious Optimizers: Improving Training with One Line of
      Code <https://arxiv.org/abs/2411.16085>`_, 2024.

    Example:
      >>> import jax.numpy as jnp
      >>> from optax_rmsprop import compat
      >>> tx = compat.timm(lr=0.1, alpha=0.9)
      >>> g = jnp.array([3.0])
      >>> u, _ = tx.update(g, tx.init(g))
      >>> round(float(u[0]), 5)  # the mean square starts at 1: -0.1 * 3 / sqrt(1 + (9 - 1) * 0.1)
      -0.22361
    """
    _common.check_flags(
        decoupled_decay=decoupled_decay, lr_in_momentum=lr_in_momentum, caution=caution
    )
    step = TimmStep(
        alpha, eps, weight_decay, momentum, centered, decoupled_decay, lr_in_momentum, caution
    )
    # timm starts the mean square at ones ("PyTorch inits to zero")
    return torch_style(step, name="compat.timm", lr=lr, square_init=1.0)
