"""Keras 3 (``keras.optimizers.RMSprop``) and legacy tf.keras (optimizer_v2)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_rmsprop._tree import Tree
from optax_rmsprop.compat import _common, _frame
from optax_rmsprop.compat._frame import Leaf, Slots
from optax_rmsprop.compat._tensorflow import TFHyper, apply_rmsprop


class KerasRMSpropState(NamedTuple):
    """State of :func:`keras` and :func:`keras_legacy`, named as Keras's variables.

    Attributes:
      iterations: number of updates; schedules are called with it (0-based).
      velocity: mean square (legacy: the ``rms`` slot), initialised to zeros.
      momentum: momentum buffer (``momentum > 0``; legacy: the momentum path), else None.
      average_gradient: mean gradient (``centered=True``; legacy ``mg``), else None.
    """

    iterations: jax.Array
    velocity: Tree
    momentum: Tree | None
    average_gradient: Tree | None


KERAS_LAYOUT = _frame.Layout(
    KerasRMSpropState, "iterations", "velocity", "average_gradient", "momentum"
)


def check_keras_arguments(
    learning_rate: Any,
    rho: Any,
    momentum: Any,
    epsilon: Any,
    centered: Any,
    decay: _common.Named,
    callables: tuple[str, ...],
) -> None:
    """The checks both Keras ports make, under Keras's names.

    ``decay`` is Keras 3's ``weight_decay`` or tf.keras's learning-rate
    ``decay`` (both >= 0); ``learning_rate`` and ``callables`` may be callables.
    """
    _common.check_hyperparameters(
        callables=("learning_rate", *callables),
        lr=("learning_rate", learning_rate),
        decay=("rho", rho),
        eps=("epsilon", epsilon),
        momentum=("momentum", momentum),
        weight_decay=decay,
    )
    _common.check_flags(centered=centered)


# -- Keras 3 -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KerasStep:
    """Keras 3's ``RMSprop.update_step`` for one variable, after its weight decay.

    Called with the learning rate as Keras holds it (a ``floatx`` variable, or
    a schedule's value). ``weight_decay`` is None for none; it applies to the
    leaves the frame marks ``decay``.
    """

    rho: float
    momentum: float
    epsilon: float
    centered: bool
    weight_decay: float | None

    def __call__(self, leaf: Leaf, lr: jax.Array) -> tuple[jax.Array, Slots]:
        v, avg = leaf.slots.square, leaf.slots.grad_avg
        lr = _common.as_dtype_of(lr, v)
        g = leaf.grad.astype(v.dtype)
        rho, one_minus_rho = _common.as_dtype_of(self.rho, v), _common.as_dtype_of(1 - self.rho, v)
        v = rho * v + one_minus_rho * jnp.square(g)
        if self.centered:
            avg = rho * avg + one_minus_rho * g
            denominator = v - jnp.square(avg) + _common.as_dtype_of(self.epsilon, v)
        else:
            denominator = v + _common.as_dtype_of(self.epsilon, v)
        increment = (lr * g) / jnp.sqrt(denominator)
        mom = None
        if self.momentum > 0:
            mom = _common.as_dtype_of(self.momentum, v) * leaf.slots.momentum + increment
            step = mom
        else:
            step = increment
        u = -step
        if self.weight_decay is not None and leaf.decay:
            # Keras decays first, p - p * wd * lr, then subtracts the step
            p = leaf.param
            decayed = p - p * _common.as_dtype_of(self.weight_decay, p) * lr
            u = (decayed - step) - p
        return u, Slots(v, avg, mom)


def check_excluded_names(names: Any) -> tuple[str, ...]:
    """Keras's ``var_names``: a list of regular expressions, checked and compiled once."""
    if names is None:
        return ()
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError(
            f"exclude_from_weight_decay must be a list of strings (Keras's var_names), got "
            f"{names!r}; for one name write [{names!r}]."
        )
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"exclude_from_weight_decay must hold strings, got {name!r}.")
        try:
            re.compile(name)
        except re.error as err:
            raise ValueError(
                f"exclude_from_weight_decay: {name!r} is not a regular expression ({err})."
            ) from err
    return tuple(names)


def keras(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    rho: float = 0.9,
    momentum: float = 0.0,
    epsilon: float = 1e-7,
    centered: bool = False,
    weight_decay: float | None = None,
    *,
    exclude_from_weight_decay: Sequence[str] | None = None,
    weight_decay_mask: _frame.Mask = None,
    floatx: str = "float32",
) -> optax.GradientTransformationExtraArgs:
    """``keras.optimizers.RMSprop`` of Keras 3 (and tf.keras >= 2.11), step for step.

    Keras's order: decoupled weight decay first, ``p = p - p * wd * lr``; then
    ``velocity = rho * velocity + (1 - rho) * g**2``, centered
    ``average = rho * average + (1 - rho) * g``,
    ``increment = (lr * g) / sqrt(velocity [- average**2] + epsilon)`` (eps
    **inside** the root), momentum ``m = momentum * m + increment`` (lr
    **inside** the buffer) and ``p -= m``, else ``p -= increment``.

    Keras's ``optimizer.exclude_from_weight_decay(var_names=[...])`` is
    ``exclude_from_weight_decay=[...]`` here: the parameters it excludes keep
    their RMSProp step and lose only the weight decay. (``optax.masked`` would
    not do this: it passes their raw gradient through, with no RMSProp scaling.)
    Keras searches each pattern in the variable's name (``"bias"``); here it is
    searched in the parameter's path, its keys joined by ``/``
    (``"Dense_0/bias"``), which ends with that name. For ``var_list`` (given
    variables) pass ``weight_decay_mask``.

    Args:
      learning_rate: a float or an optax schedule of the 0-based iteration,
        like a ``keras.optimizers.schedules.LearningRateSchedule``. A constant
        is rounded to ``floatx``, as Keras's learning-rate variable is.
      rho: discounting factor of the mean square, in [0, 1].
      momentum: momentum factor in [0, 1); 0 allocates no buffer.
      epsilon: added to the mean square, inside the root, >= 0.
      centered: normalise by the estimated variance.
      weight_decay: decoupled decay ``p *= 1 - wd * lr``, >= 0 (needs
        ``params``); None or 0 for none.
      exclude_from_weight_decay: Keras's ``var_names``: regular expressions; a
        parameter whose path contains a match (``re.search``) is not decayed.
      weight_decay_mask: which parameters are decayed: a tree of bools (or a
        prefix of one) shaped like the params, or a function of the params
        returning one, as in ``optax.adamw``; None: all. Combined with
        ``exclude_from_weight_decay``: decayed where both allow it.
      floatx: Keras's ``keras.config.floatx()``, the dtype of its learning-rate
        variable.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with a :class:`KerasRMSpropState`.

    Raises:
      ValueError: at construction, for a value out of its range, a callable
        other than ``learning_rate``, a bad ``floatx`` or bad excluded names.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from optax_rmsprop import compat
      >>> tx = compat.keras(learning_rate=0.5)  # Keras's own golden test
      >>> x = jnp.array([1.0, 2.0, 3.0, 4.0])
      >>> u, _ = tx.update(jnp.array([1.0, 6.0, 7.0, 2.0]), tx.init(x), x)
      >>> [round(float(v), 4) for v in optax.apply_updates(x, u)]
      [-0.5811, 0.4189, 1.4189, 2.4189]
      >>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
      >>> tx = compat.keras(0.1, weight_decay=0.5, exclude_from_weight_decay=["b"])
      >>> u, _ = tx.update({"w": jnp.zeros(2), "b": jnp.zeros(2)}, tx.init(params), params)
      >>> new = optax.apply_updates(params, u)  # a zero gradient: only w's decay moves
      >>> [round(float(new[k][0]), 6) for k in ("w", "b")]
      [0.95, 1.0]
    """
    check_keras_arguments(
        learning_rate, rho, momentum, epsilon, centered, ("weight_decay", weight_decay), ()
    )
    excluded = check_excluded_names(exclude_from_weight_decay)
    lr_dtype = _common.check_floatx(floatx)
    use_wd = bool(weight_decay)

    def hyper_at(count: jax.Array) -> jax.Array:
        if callable(learning_rate):
            return learning_rate(count)
        return jnp.asarray(learning_rate, lr_dtype)

    port = _frame.Port(
        name="compat.keras",
        layout=KERAS_LAYOUT,
        kernel=KerasStep(rho, momentum, epsilon, centered, weight_decay if use_wd else None),
        hyper_at=hyper_at,
        square_init=0.0,
        centered=centered,
        momentum_slot=momentum > 0,
        needs_params=f"weight_decay={weight_decay}" if use_wd else None,
        decay_mask=weight_decay_mask if use_wd else None,
        decay_excluded=excluded if use_wd else (),
    )
    return _frame.transformation(port)


# -- legacy tf.keras (optimizer_v2) --------------------------------------------------------
class LegacyHyper(NamedTuple):
    """optimizer_v2's hyperparameters for one step, as its float32 variables hold them."""

    lr: jax.Array
    rho: jax.Array
    momentum: jax.Array
    iterations: jax.Array


@dataclasses.dataclass(frozen=True)
class KerasLegacyStep:
    """optimizer_v2's ``RMSprop._resource_apply_dense`` for one variable.

    On the momentum path the step is TF's C++ kernel (:func:`apply_rmsprop`),
    else the Python path: ``p -= lr * g / (sqrt(rms [- mg**2]) + epsilon)``.
    """

    epsilon: float
    decay: float
    momentum_path: bool

    def __call__(self, leaf: Leaf, hyper: LegacyHyper) -> tuple[jax.Array, Slots]:
        rms = leaf.slots.square
        lr = _common.as_dtype_of(hyper.lr, rms)
        if self.decay > 0:  # optimizer_v2._decayed_lr, in the variable's dtype
            step = hyper.iterations.astype(rms.dtype)
            decay = _common.as_dtype_of(_common.floatx(self.decay), rms)
            lr = lr / (jnp.ones([], rms.dtype) + decay * step)
        leaf = leaf._replace(grad=leaf.grad.astype(rms.dtype))
        if self.momentum_path:
            return apply_rmsprop(leaf, TFHyper(lr, hyper.rho, hyper.momentum, self.epsilon))
        g, mg = leaf.grad, leaf.slots.grad_avg
        rho = _common.as_dtype_of(hyper.rho, rms)
        one_minus_rho = jnp.ones([], rms.dtype) - rho
        rms = rho * rms + one_minus_rho * jnp.square(g)
        denom = rms
        if mg is not None:
            mg = rho * mg + one_minus_rho * g
            denom = rms - jnp.square(mg)
        u = -(lr * g / (jnp.sqrt(denom) + _common.as_dtype_of(self.epsilon, rms)))
        return u, Slots(rms, mg, None)


def takes_momentum_path(momentum: Any) -> bool:
    """optimizer_v2's test: a tensor (here an array) or a callable momentum, or one > 0."""
    return callable(momentum) or isinstance(momentum, jax.Array) or momentum > 0


def keras_legacy(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    rho: float | optax.Schedule = 0.9,
    momentum: float | optax.Schedule = 0.0,
    epsilon: float = 1e-7,
    centered: bool = False,
    decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """``tf.keras.optimizers.RMSprop`` of TF <= 2.10 (optimizer_v2, now ``tf_keras...legacy``).

    Two code paths, as in the original. Without momentum a Python path with
    eps **outside** the root, ``p -= lr * g / (sqrt(rms [- mg**2]) + eps)``. On
    the momentum path, TF's C++ kernel: eps **inside** the root and lr inside
    the buffer (as :func:`tensorflow_v1`, but with the mean square starting at
    0). The momentum path is taken when ``momentum > 0``, and also, as
    optimizer_v2 decides, when ``momentum`` is a callable or an array, whatever
    its value: ``momentum=lambda count: 0.0`` puts eps inside the root.
    ``epsilon=0`` silently becomes 1e-7, as ``epsilon or K.epsilon()`` does.

    ``decay`` is **not** rho: it is inverse-time learning-rate decay,
    ``lr / (1 + decay * iterations)``. ``RMSprop(decay=0.9)`` ported as
    ``rho=0.9`` is a different optimizer; ported as written it divides the
    learning rate by 10 after 10 steps and by 100 after 110.

    optimizer_v2 calls a callable ``learning_rate``, ``rho`` or ``momentum`` at
    every step; here it is called with the 0-based iteration count (write the
    original's ``lambda: f(optimizer.iterations)`` as ``lambda count: f(count)``).
    Like the float32 tensor TF makes of the Python number a callable returns,
    its value is rounded to float32. A callable ``epsilon`` or ``decay`` is
    refused: tf.keras fails on it (``epsilon`` at the first step, ``decay`` at
    construction).

    Args:
      learning_rate: a float or a schedule of the 0-based iteration.
      rho: discounting factor of the mean square, in [0, 1], or a schedule.
      momentum: momentum factor in [0, 1), or a schedule (momentum path).
      epsilon: see above, >= 0; ``0`` means 1e-7.
      centered: normalise by the estimated variance.
      decay: inverse-time decay of the learning rate, >= 0.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with a :class:`KerasRMSpropState`.

    Raises:
      ValueError: at construction, for a value out of its range, a callable
        ``epsilon`` or ``decay``, a callable that does not take the count, or a
        non-bool ``centered``.

    Example:
      >>> import jax.numpy as jnp
      >>> from optax_rmsprop import compat
      >>> tx = compat.keras_legacy(learning_rate=0.1, decay=0.9)
      >>> g, state = jnp.array([1.0]), tx.init(jnp.zeros(1))
      >>> for _ in range(3):
      ...     u, state = tx.update(g, state)
      >>> round(float(u[0]), 4)  # -0.1 / (1 + 0.9 * 2) / (sqrt(1 - 0.9**3) + eps)
      -0.0686
    """
    check_keras_arguments(
        learning_rate, rho, momentum, epsilon, centered, ("decay", decay), ("rho", "momentum")
    )
    momentum_path = takes_momentum_path(momentum)
    values = (learning_rate, rho, momentum)

    def hyper_at(count: jax.Array) -> LegacyHyper:
        # optimizer_v2 keeps learning_rate, rho and momentum in float32 variables
        lr, rho_t, momentum_t = (_common.floatx(_common.value_at(v, count)) for v in values)
        return LegacyHyper(lr, rho_t, momentum_t, count)

    port = _frame.Port(
        name="compat.keras_legacy",
        layout=KERAS_LAYOUT,
        kernel=KerasLegacyStep(epsilon or 1e-7, decay, momentum_path),
        hyper_at=hyper_at,
        square_init=0.0,
        centered=centered,
        momentum_slot=momentum_path,
    )
    return _frame.transformation(port)
