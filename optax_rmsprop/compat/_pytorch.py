"""``torch.optim.RMSprop``, step for step, and the frame of PyTorch-style ports."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from optax_rmsprop._tree import Tree
from optax_rmsprop.compat import _common, _frame
from optax_rmsprop.compat._frame import Leaf, Slots


class PyTorchRMSpropState(NamedTuple):
    """State of :func:`pytorch` and :func:`timm`, named as in ``torch.optim.RMSprop.state``.

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


TORCH_LAYOUT = _frame.Layout(
    PyTorchRMSpropState, "step", "square_avg", "grad_avg", "momentum_buffer"
)


class TorchStyleStep(Protocol):
    """A PyTorch-style per-parameter step: its settings, and the step itself."""

    alpha: float
    eps: float
    weight_decay: float
    momentum: float
    centered: bool

    def __call__(self, leaf: Leaf, lr: jax.Array) -> tuple[jax.Array, Slots]: ...


def torch_style(
    step: TorchStyleStep, *, name: str, lr: optax.ScalarOrSchedule, square_init: float
) -> optax.GradientTransformationExtraArgs:
    """A PyTorch-style port: the hyperparameters checked under PyTorch's names, lazy slots.

    Slots exist only for the options in use (``grad_avg`` if centered, the
    momentum buffer if ``momentum > 0``), as torch creates them; ``lr`` may be
    a schedule of the 0-based step (standing in for an ``lr_scheduler``).
    ``step`` gets this step's learning rate.
    """
    _common.check_hyperparameters(
        callables=("lr",),
        lr=("lr", lr),
        decay=("alpha", step.alpha),
        eps=("eps", step.eps),
        momentum=("momentum", step.momentum),
        weight_decay=("weight_decay", step.weight_decay),
    )
    _common.check_flags(centered=step.centered)
    port = _frame.Port(
        name=name,
        layout=TORCH_LAYOUT,
        kernel=step,
        hyper_at=lambda count: _common.value_at(lr, count),
        square_init=square_init,
        centered=step.centered,
        momentum_slot=step.momentum > 0,
        needs_params=f"weight_decay={step.weight_decay}" if step.weight_decay != 0 else None,
    )
    return _frame.transformation(port)


@dataclasses.dataclass(frozen=True)
class PyTorchStep:
    """PyTorch's single-tensor RMSprop for one parameter, in its order of operations.

    Complex tensors are computed as two reals each, as ``torch.view_as_real``
    does. Called with the :class:`~optax_rmsprop.compat._frame.Leaf` and this
    step's learning rate; returns the update and the new slots.
    """

    alpha: float
    eps: float
    weight_decay: float
    momentum: float
    centered: bool
    maximize: bool

    def __call__(self, leaf: Leaf, lr: jax.Array) -> tuple[jax.Array, Slots]:
        like = leaf.grad
        g = -leaf.grad if self.maximize else leaf.grad
        if self.weight_decay != 0:
            g = g + _common.as_dtype_of(self.weight_decay, g) * leaf.param
        g, v = _common.to_real(g), _common.to_real(leaf.slots.square)
        v = v * _common.as_dtype_of(self.alpha, v) + _common.as_dtype_of(1 - self.alpha, v) * (
            g * g
        )
        m = None
        if self.centered:
            m = _common.to_real(leaf.slots.grad_avg)
            m = m + _common.as_dtype_of(1 - self.alpha, m) * (g - m)  # lerp(m, g, w), w < 0.5
            avg = jnp.sqrt(v - m * m)
        else:
            avg = jnp.sqrt(v)
        avg = avg + _common.as_dtype_of(self.eps, avg)
        neg_lr = _common.as_dtype_of(-lr, avg)
        b = None
        if self.momentum > 0:
            b = _common.to_real(leaf.slots.momentum) * _common.as_dtype_of(self.momentum, avg)
            b = b + g / avg
            u = neg_lr * b
        else:
            u = neg_lr * (g / avg)
        back = lambda x: _common.from_real(x, like)
        return back(u), Slots(back(v), back(m), back(b))


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
      alpha: smoothing constant of the squared-gradient average, in [0, 1].
      eps: added to the root, outside it, >= 0.
      weight_decay: coupled L2 penalty, >= 0 (needs ``params`` in ``update``).
      momentum: momentum factor in [0, 1); 0 allocates no buffer, as in PyTorch.
      centered: normalise by the estimated variance.
      maximize: maximise the objective.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with a
      :class:`PyTorchRMSpropState`.

    Raises:
      ValueError: at construction, for a value out of its range or a callable
        other than ``lr``, under PyTorch's name of the argument.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from optax_rmsprop import compat
      >>> tx = compat.pytorch(lr=0.01, alpha=0.99)  # torch.optim.RMSprop(params, lr=0.01)
      >>> params = jnp.array([1.0, 2.0])
      >>> updates, state = tx.update(jnp.array([0.1, -0.2]), tx.init(params), params)
      >>> [round(float(u), 4) for u in updates]  # -lr * g / (sqrt(0.01 * g**2) + eps)
      [-0.1, 0.1]
    """
    _common.check_flags(maximize=maximize)
    step = PyTorchStep(alpha, eps, weight_decay, momentum, centered, maximize)
    return torch_style(step, name="compat.pytorch", lr=lr, square_init=0.0)
