"""TensorFlow's RMSProp kernels and ``tf.compat.v1.train.RMSPropOptimizer``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_rmsprop import _tree
from optax_rmsprop._tree import Tree
from optax_rmsprop.compat import _common


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


def apply_rmsprop_kernel(g, ms, mom, mg, *, lr, rho, momentum, epsilon):
    """TF's CPU ``ApplyRMSProp`` / ``ApplyCenteredRMSProp`` functors, in their op order.

    ``ms += (g*g - ms) * (1 - rho)``; centered ``mg += (g - mg) * (1 - rho)``;
    ``mom = mom * momentum + (g * lr) / sqrt(ms [- mg*mg] + epsilon)``; the
    update is ``-mom``. Every hyperparameter is first cast to the variable's
    dtype, and ``1 - rho`` is computed in that dtype, as the kernel does.
    Returns ``(update, ms, mom, mg)``.
    """
    rho_t = _common.as_dtype_of(rho, ms)
    one_minus_rho = jnp.ones([], ms.dtype) - rho_t
    ms = ms + (g * g - ms) * one_minus_rho
    if mg is not None:
        mg = mg + (g - mg) * one_minus_rho
        denom = (ms - mg * mg) + _common.as_dtype_of(epsilon, ms)
    else:
        denom = ms + _common.as_dtype_of(epsilon, ms)
    mom = mom * _common.as_dtype_of(momentum, ms) + (g * _common.as_dtype_of(lr, ms)) / jnp.sqrt(
        denom
    )
    return -mom, ms, mom, mg


def tensorflow_v1(
    learning_rate: optax.ScalarOrSchedule,
    decay: float = 0.9,
    momentum: float = 0.0,
    epsilon: float = 1e-10,
    centered: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``tf.compat.v1.train.RMSPropOptimizer(learning_rate, decay, momentum, epsilon, centered)``.

    TF1's conventions: the mean square starts at **1**, eps sits **inside** the
    root, the learning rate sits **inside** the momentum buffer, and the mean
    square is updated as ``ms += (g*g - ms) * (1 - decay)``. This is the
    optimizer of Inception, MobileNet, EfficientNet and IMPALA.

    Args:
      learning_rate: a float or an optax schedule of the 0-based step (TF1
        schedules read ``global_step``, also 0 on the first update).
      decay: discounting factor of the mean square (rho).
      momentum: momentum factor; the slot exists even when 0.
      epsilon: added to the mean square, inside the root.
      centered: normalise by the estimated variance.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with a :class:`TFRMSPropState`.

    Example:
      >>> import jax.numpy as jnp
      >>> from optax_rmsprop import compat
      >>> tx = compat.tensorflow_v1(learning_rate=0.1)
      >>> g = jnp.array([3.0])
      >>> updates, _ = tx.update(g, tx.init(g))
      >>> round(float(updates[0]), 5)  # -0.1 * 3 / sqrt(0.9 * 1 + 0.1 * 9)
      -0.22361
    """
    _common.check_hyperparameters(("learning_rate", learning_rate), ("decay", decay),
                                  ("epsilon", epsilon), momentum)  # fmt: skip

    def init_fn(params):
        return TFRMSPropState(
            step=jnp.zeros([], jnp.int32),
            rms=jax.tree.map(jnp.ones_like, params),
            momentum=_common.zeros_like_tree(params),
            mg=_common.zeros_like_tree(params) if centered else None,
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        _common.check_structure(updates, state.rms, "compat.tensorflow_v1 update")
        lr = _common.learning_rate_at(learning_rate, state.step)
        mg = state.mg if centered else _tree.nones_like(state.rms)
        # TF1 converts each hyperparameter to a float32 tensor, then casts it.
        hyper = dict(
            lr=_common.floatx(lr),
            rho=_common.floatx(decay),
            momentum=_common.floatx(momentum),
            epsilon=_common.floatx(epsilon),
        )
        out = jax.tree.map(
            lambda g, ms, mom, m: apply_rmsprop_kernel(g, ms, mom, m, **hyper),
            updates,
            state.rms,
            state.momentum,
            mg,
        )
        u, ms, mom, mg = _tree.unzip(updates, out, 4)
        return u, TFRMSPropState(
            step=optax.safe_int32_increment(state.step),
            rms=ms,
            momentum=mom,
            mg=mg if centered else None,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
