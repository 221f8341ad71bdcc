"""Keras 3 (``keras.optimizers.RMSprop``) and legacy tf.keras (optimizer_v2)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_rmsprop import _tree
from optax_rmsprop._tree import Tree
from optax_rmsprop.compat import _common
from optax_rmsprop.compat._tensorflow import apply_rmsprop_kernel


class KerasRMSpropState(NamedTuple):
    """State of :func:`keras` and :func:`keras_legacy`, named as Keras's variables.

    Attributes:
      iterations: number of updates; schedules are called with it (0-based).
      velocity: mean square (legacy: the ``rms`` slot), initialised to zeros.
      momentum: momentum buffer (``momentum > 0``), else None.
      average_gradient: mean gradient (``centered=True``; legacy ``mg``), else None.
    """

    iterations: jax.Array
    velocity: Tree
    momentum: Tree | None
    average_gradient: Tree | None


def init_keras_state(params, momentum: bool, centered: bool) -> KerasRMSpropState:
    """Zeros for every slot in use, ``iterations`` at 0."""
    zeros = _common.zeros_like_tree(params)
    return KerasRMSpropState(
        iterations=jnp.zeros([], jnp.int32),
        velocity=zeros,
        momentum=zeros if momentum else None,
        average_gradient=zeros if centered else None,
    )


def next_keras_state(updates, out, state, use_momentum, centered):
    """Splits the per-leaf ``(update, velocity, momentum, average)`` tuples; counts the step."""
    u, v, mom, mg = _tree.unzip(updates, out, 4)
    return u, KerasRMSpropState(
        iterations=optax.safe_int32_increment(state.iterations),
        velocity=v,
        momentum=mom if use_momentum else None,
        average_gradient=mg if centered else None,
    )


def keras_kernel(g, p, v, mom, avg, *, lr_t, rho, epsilon, momentum, centered, weight_decay):
    """Keras 3's ``RMSprop.update_step`` for one variable: ``(update, v, mom, avg)``.

    ``lr_t`` is the learning rate as Keras holds it (a ``floatx`` variable, or
    a schedule's value); ``weight_decay`` is None for none.
    """
    lr_t = _common.as_dtype_of(lr_t, v)
    g = g.astype(v.dtype)
    v = _common.as_dtype_of(rho, v) * v + _common.as_dtype_of(1 - rho, v) * jnp.square(g)
    if centered:
        avg = _common.as_dtype_of(rho, v) * avg + _common.as_dtype_of(1 - rho, v) * g
        denominator = v - jnp.square(avg) + _common.as_dtype_of(epsilon, v)
    else:
        denominator = v + _common.as_dtype_of(epsilon, v)
    increment = (lr_t * g) / jnp.sqrt(denominator)
    if momentum > 0:
        mom = _common.as_dtype_of(momentum, v) * mom + increment
        step = mom
    else:
        step = increment
    u = -step
    if weight_decay is not None:
        decayed = p - p * _common.as_dtype_of(weight_decay, p) * lr_t
        u = (decayed - step) - p
    return u, v, mom, avg


def keras(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    rho: float = 0.9,
    momentum: float = 0.0,
    epsilon: float = 1e-7,
    centered: bool = False,
    weight_decay: float | None = None,
    *,
    floatx: str = "float32",
) -> optax.GradientTransformationExtraArgs:
    """``keras.optimizers.RMSprop`` of Keras 3 (and tf.keras >= 2.11), step for step.

    Keras's order: decoupled weight decay first, ``p = p - p * wd * lr``; then
    ``velocity = rho * velocity + (1 - rho) * g**2``, centered
    ``average = rho * average + (1 - rho) * g``,
    ``increment = (lr * g) / sqrt(velocity [- average**2] + epsilon)`` (eps
    **inside** the root), momentum ``m = momentum * m + increment`` (lr
    **inside** the buffer) and ``p -= m``, else ``p -= increment``.

    Args:
      learning_rate: a float or an optax schedule of the 0-based iteration,
        like a ``keras.optimizers.schedules.LearningRateSchedule``. A constant
        is rounded to ``floatx``, as Keras's learning-rate variable is.
      rho: discounting factor of the mean square.
      momentum: momentum factor; 0 allocates no buffer.
      epsilon: added to the mean square, inside the root.
      centered: normalise by the estimated variance.
      weight_decay: decoupled decay ``p *= 1 - wd * lr`` (needs ``params``);
        None or 0 for none. Mask leaves with ``optax.masked`` as Keras's
        ``exclude_from_weight_decay`` would.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with a :class:`KerasRMSpropState`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from optax_rmsprop import compat
      >>> tx = compat.keras(learning_rate=0.5)  # Keras's own golden test
      >>> x = jnp.array([1.0, 2.0, 3.0, 4.0])
      >>> u, _ = tx.update(jnp.array([1.0, 6.0, 7.0, 2.0]), tx.init(x), x)
      >>> [round(float(v), 4) for v in optax.apply_updates(x, u)]
      [-0.5811, 0.4189, 1.4189, 2.4189]
    """
    _common.check_hyperparameters(("learning_rate", learning_rate), ("rho", rho),
                                  ("epsilon", epsilon), momentum,
                                  ("weight_decay", weight_decay))  # fmt: skip
    use_wd = bool(weight_decay)
    lr_dtype = _common.check_floatx(floatx)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _common.check_structure(updates, state.velocity, "compat.keras update")
        if use_wd:
            _common.require_params(params, "compat.keras update", f"weight_decay={weight_decay}")
        lr = _common.learning_rate_at(learning_rate, state.iterations)
        none = _tree.nones_like(state.velocity)
        mom_tree = state.momentum if momentum > 0 else none
        avg_tree = state.average_gradient if centered else none
        p_tree = params if use_wd else none

        lr_t = lr if callable(learning_rate) else jnp.asarray(lr, lr_dtype)
        kernel = functools.partial(
            keras_kernel,
            lr_t=lr_t,
            rho=rho,
            epsilon=epsilon,
            momentum=momentum,
            centered=centered,
            weight_decay=weight_decay if use_wd else None,
        )
        out = jax.tree.map(kernel, updates, p_tree, state.velocity, mom_tree, avg_tree)
        return next_keras_state(updates, out, state, momentum > 0, centered)

    return optax.GradientTransformationExtraArgs(
        lambda params: init_keras_state(params, momentum > 0, centered), update_fn
    )


def keras_legacy_kernel(
    g, rms, mom, mg, *, base_lr, iterations, rho, momentum, epsilon, centered, decay
):
    """optimizer_v2's ``RMSprop`` for one variable: ``(update, rms, mom, mg)``.

    ``rho`` and ``momentum`` come as the float32 variables optimizer_v2 keeps
    (``mom`` is None without momentum); with momentum the step is TF's C++
    kernel, else the Python path below.
    """
    lr_t = _common.as_dtype_of(_common.floatx(base_lr), rms)
    if decay > 0:
        step = iterations.astype(rms.dtype)
        decay_t = _common.as_dtype_of(_common.floatx(decay), rms)
        lr_t = lr_t / (jnp.ones([], rms.dtype) + decay_t * step)
    g = g.astype(rms.dtype)
    if mom is not None:
        return apply_rmsprop_kernel(
            g, rms, mom, mg, lr=lr_t, rho=rho, momentum=momentum, epsilon=epsilon
        )
    rho_t = _common.as_dtype_of(rho, rms)
    one_minus_rho = jnp.ones([], rms.dtype) - rho_t
    rms = rho_t * rms + one_minus_rho * jnp.square(g)
    denom = rms
    if centered:
        mg = rho_t * mg + one_minus_rho * g
        denom = rms - jnp.square(mg)
    return -(lr_t * g / (jnp.sqrt(denom) + _common.as_dtype_of(epsilon, rms))), rms, mom, mg


def keras_legacy(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    rho: float = 0.9,
    momentum: float = 0.0,
    epsilon: float = 1e-7,
    centered: bool = False,
    decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """``tf.keras.optimizers.RMSprop`` of TF <= 2.10 (optimizer_v2, now ``tf_keras...legacy``).

    Two code paths, as in the original: with ``momentum == 0`` a Python path
    with eps **outside** the root, ``p -= lr * g / (sqrt(rms [- mg**2]) + eps)``;
    with ``momentum > 0`` TF's C++ kernel, eps **inside** the root and lr inside
    the buffer (as :func:`tensorflow_v1`, but with the mean square starting at
    0). ``epsilon=0`` silently becomes 1e-7, as ``epsilon or K.epsilon()`` does.

    ``decay`` is **not** rho: it is inverse-time learning-rate decay,
    ``lr / (1 + decay * iterations)``. ``RMSprop(decay=0.9)`` ported as
    ``rho=0.9`` is a different optimizer; ported as written it divides the
    learning rate by 10 after 10 steps and by 100 after 110.

    Args:
      learning_rate: a float or an optax schedule of the 0-based iteration.
      rho: discounting factor of the mean square.
      momentum: momentum factor; > 0 switches to the C++ kernel.
      epsilon: see above; ``0`` means 1e-7.
      centered: normalise by the estimated variance.
      decay: inverse-time decay of the learning rate, >= 0.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with a :class:`KerasRMSpropState`.

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
    _common.check_hyperparameters(("learning_rate", learning_rate), ("rho", rho),
                                  ("epsilon", epsilon), momentum, ("decay", decay))  # fmt: skip
    epsilon = epsilon or 1e-7

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        _common.check_structure(updates, state.velocity, "compat.keras_legacy update")
        base_lr = _common.learning_rate_at(learning_rate, state.iterations)
        none = _tree.nones_like(state.velocity)
        mom_tree = state.momentum if momentum > 0 else none
        mg_tree = state.average_gradient if centered else none

        # optimizer_v2 keeps learning_rate, rho and momentum in float32 variables.
        rho_x, momentum_x = _common.floatx(rho), _common.floatx(momentum)

        kernel = functools.partial(
            keras_legacy_kernel,
            base_lr=base_lr,
            iterations=state.iterations,
            rho=rho_x,
            momentum=momentum_x,
            epsilon=epsilon,
            centered=centered,
            decay=decay,
        )
        out = jax.tree.map(kernel, updates, state.velocity, mom_tree, mg_tree)
        return next_keras_state(updates, out, state, momentum > 0, centered)

    return optax.GradientTransformationExtraArgs(
        lambda params: init_keras_state(params, momentum > 0, centered), update_fn
    )
