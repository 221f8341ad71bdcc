"""TensorFlow's RMSProp kernels and ``tf.compat.v1.train.RMSPropOptimizer``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_rmsprop._tree import Tree
from optax_rmsprop.compat import _common, _frame
from optax_rmsprop.compat._frame import Leaf, Slots


class TFRMSPropState(NamedTuple):
    """State of :func:`tensorflow_v1`, named as TF1's slots.

    Attributes:
      step: number of updates (TF1's ``global_step`` when passed to ``minimize``).
      rms: mean square, initialised to **ones** as in TF1.
      momentum: the momentum slot; TF1 always allocates it.
      mg: mean gradient (``centered=True``), else None.
    """

    step: jax.Array
    rms: Tree
    momentum: Tree
    mg: Tree | None


class TFHyper(NamedTuple):
    """The hyperparameters TF's ``ApplyRMSProp`` kernel takes, each cast to the variable's dtype.

    TF1 passes float32 tensors (so float64 variables see float32-rounded
    values); legacy tf.keras passes its ``epsilon`` as a Python number.
    """

    lr: Any
    rho: Any
    momentum: Any
    epsilon: Any


def apply_rmsprop(leaf: Leaf, hyper: TFHyper) -> tuple[jax.Array, Slots]:
    """TF's CPU ``ApplyRMSProp`` / ``ApplyCenteredRMSProp`` functors, in their op order.

    ``ms += (g*g - ms) * (1 - rho)``; centered (a ``grad_avg`` slot)
    ``mg += (g - mg) * (1 - rho)``; ``mom = mom * momentum + (g * lr) /
    sqrt(ms [- mg*mg] + epsilon)``; the update is ``-mom``. Every hyperparameter
    is first cast to the variable's dtype, and ``1 - rho`` is computed in that
    dtype, as the kernel does.
    """
    g, ms, mg = leaf.grad, leaf.slots.square, leaf.slots.grad_avg
    rho = _common.as_dtype_of(hyper.rho, ms)
    one_minus_rho = jnp.ones([], ms.dtype) - rho
    ms = ms + (g * g - ms) * one_minus_rho
    if mg is not None:
        mg = mg + (g - mg) * one_minus_rho
        denom = (ms - mg * mg) + _common.as_dtype_of(hyper.epsilon, ms)
    else:
        denom = ms + _common.as_dtype_of(hyper.epsilon, ms)
    momentum = _common.as_dtype_of(hyper.momentum, ms)
    mom = leaf.slots.momentum * momentum + (g * _common.as_dtype_of(hyper.lr, ms)) / jnp.sqrt(denom)
    return -mom, Slots(ms, mg, mom)


TF1_LAYOUT = _frame.Layout(TFRMSPropState, "step", "rms", "mg", "momentum")


def tensorflow_v1(
    learning_rate: optax.ScalarOrSchedule,
    decay: float | optax.Schedule = 0.9,
    momentum: float | optax.Schedule = 0.0,
    epsilon: float | optax.Schedule = 1e-10,
    centered: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``tf.compat.v1.train.RMSPropOptimizer(learning_rate, decay, momentum, epsilon, centered)``.

    TF1's conventions: the mean square starts at **1**, eps sits **inside** the
    root, the learning rate sits **inside** the momentum buffer, and the mean
    square is updated as ``ms += (g*g - ms) * (1 - decay)``. Every
    hyperparameter is held as a float32 tensor, then cast to the variable's
    dtype. This is the optimizer of Inception, MobileNet, EfficientNet and IMPALA.

    TF1 calls a callable hyperparameter at every step; here a callable is
    called with the 0-based step count (``global_step`` when passed to
    ``minimize``), as an optax schedule.

    Args:
      learning_rate: a float or a schedule of the 0-based step.
      decay: discounting factor of the mean square (rho), in [0, 1], or a schedule.
      momentum: momentum factor in [0, 1), or a schedule; the slot exists even when 0.
      epsilon: added to the mean square, inside the root, >= 0, or a schedule.
      centered: normalise by the estimated variance.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with a :class:`TFRMSPropState`.

    Raises:
      ValueError: at construction, for a value out of its range, a callable
        that does not take the step count, or a non-bool ``centered``.

    Example:
      >>> import jax.numpy as jnp
      >>> from optax_rmsprop import compat
      >>> tx = compat.tensorflow_v1(learning_rate=0.1)
      >>> g = jnp.array([3.0])
      >>> updates, _ = tx.update(g, tx.init(g))
      >>> round(float(updates[0]), 5)  # -0.1 * 3 / sqrt(0.9 * 1 + 0.1 * 9)
      -0.22361
    """
    names = ("learning_rate", "decay", "momentum", "epsilon")
    _common.check_hyperparameters(
        callables=names,
        lr=("learning_rate", learning_rate),
        decay=("decay", decay),
        momentum=("momentum", momentum),
        eps=("epsilon", epsilon),
    )
    _common.check_flags(centered=centered)
    values = (learning_rate, decay, momentum, epsilon)

    def hyper_at(count: jax.Array) -> TFHyper:
        # TF1 converts each value to a float32 tensor, then casts it per variable
        return TFHyper(*(_common.floatx(_common.value_at(v, count)) for v in values))

    port = _frame.Port(
        name="compat.tensorflow_v1",
        layout=TF1_LAYOUT,
        kernel=apply_rmsprop,
        hyper_at=hyper_at,
        square_init=1.0,
        centered=centered,
        momentum_slot=True,
    )
    return _frame.transformation(port)
