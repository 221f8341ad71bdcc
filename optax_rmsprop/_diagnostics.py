"""``effective_step_size``: how RMSProp rescales each parameter's step."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from optax_rmsprop import _dequantize, _math, _scale_by_rms, _tree, _validation
from optax_rmsprop._tree import Tree


def find_rms_states(opt_state: Any) -> list[_scale_by_rms.ScaleByRmsState]:
    """Every :class:`ScaleByRmsState` inside an optimizer state, in tree order."""
    is_rms = lambda x: isinstance(x, _scale_by_rms.ScaleByRmsState)
    return [x for x in jax.tree.leaves(opt_state, is_leaf=is_rms) if is_rms(x)]


def effective_step_size(
    opt_state: Any,
    learning_rate: optax.ScalarOrSchedule | None = None,
    *,
    eps: ArrayLike | None = None,
    decay: ArrayLike | None = None,
    eps_in_sqrt: bool = False,
    bias_correction: bool = False,
    params: Tree | None = None,
) -> Tree:
    """The per-parameter step size ``lr / denom`` that RMSProp last applied.

    ``denom`` is ``sqrt(var) + eps`` (or ``sqrt(var + eps)``), from the state
    after the last update. Log its quantiles per layer to see how RMSProp
    rescales each one. The RMSProp state is found inside any ``optax.chain``,
    ``optax.inject_hyperparams``, ``optax.masked`` or ``optax.multi_transform``
    state (masked-out leaves stay ``optax.MaskedNode``).

    The state holds arrays only, no configuration (so that the state of
    ``optax.inject_hyperparams(rmsprop)`` has the structure of the plain
    one's). Pass the settings that shape the denominator as given to the
    optimizer: ``eps``, and ``eps_in_sqrt`` and ``bias_correction`` (with
    ``decay``) when set; under ``optax.inject_hyperparams``, ``eps`` and
    ``decay`` are read from its state when not passed.

    Args:
      opt_state: a state holding exactly one :class:`ScaleByRmsState`
        (from :func:`rmsprop` or :func:`scale_by_rms`).
      learning_rate: ``None`` gives ``1 / denom``; a number or array gives
        ``lr / denom``; a schedule is evaluated at the last update's step.
      eps: the optimizer's ``eps``; needed unless it is injected.
      decay: the optimizer's ``decay``; needed with ``bias_correction=True``
        unless it is injected.
      eps_in_sqrt: the optimizer's ``eps_in_sqrt``.
      bias_correction: the optimizer's ``bias_correction``.
      params: the parameters (or their ``jax.ShapeDtypeStruct``); needed only
        for ``state_dtype="int4"``, whose codes go two per byte.

    Returns:
      A tree shaped like the params, of the real dtype of ``nu``. Without
      momentum this times ``|g|`` is the size of the last step.

    Raises:
      ValueError: if the state holds no RMSProp state or more than one, or if
        ``eps`` (or ``decay``) is needed, not passed and not injected, or
        for 4-bit state without ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_rmsprop
      >>> tx = optax_rmsprop.rmsprop(0.01, eps=1e-8)
      >>> params = {'w': jnp.ones(3)}
      >>> state = tx.init(params)
      >>> _, state = tx.update({'w': jnp.full(3, 2.0)}, state, params)
      >>> optax_rmsprop.effective_step_size(state, 0.01, eps=1e-8)['w']  # 0.01 / sqrt(0.1 * 4)
      Array([0.01581139, 0.01581139, 0.01581139], dtype=float32)
    """
    states = find_rms_states(opt_state)
    if len(states) != 1:
        raise ValueError(
            f"effective_step_size: expected exactly one optax_rmsprop state in "
            f"opt_state, found {len(states)}. Pass the part of the state that "
            f"belongs to one rmsprop / scale_by_rms transform."
        )
    (state,) = states
    eps = _hyperparameter(opt_state, "eps", eps)
    correction = None
    if bias_correction:
        decay = _hyperparameter(opt_state, "decay", decay)
        # the state's count is the number of updates made, t + 1 for the last one
        correction = _math.bias_correction_factor(jnp.maximum(state.count, 1) - 1, decay)
    if callable(learning_rate):
        if state.count is None:
            raise ValueError(
                "effective_step_size: this state keeps no step count (constant learning "
                "rate), so a schedule cannot be evaluated: pass the learning rate value."
            )
        lr = learning_rate(jnp.maximum(state.count - 1, 0))
    else:
        lr = 1.0 if learning_rate is None else learning_rate
    nu, mu = _dequantize.rms_moments(state, params)

    def leaf(nu, mu):
        dtype = nu.dtype
        c = None if correction is None else jnp.asarray(correction, dtype)
        denom = _math.denominator(nu, mu, c, jnp.asarray(eps, dtype), eps_in_sqrt)
        return (jnp.asarray(lr, dtype) / denom).astype(dtype)

    return jax.tree.map(leaf, nu, _tree.nones_like(nu) if mu is None else mu)


def _hyperparameter(opt_state: Any, name: str, given: ArrayLike | None) -> ArrayLike:
    """``given``, else the value held by an ``optax.inject_hyperparams`` state in ``opt_state``."""
    if given is not None:
        _validation.check_range(name, given, 0.0, 1.0 if name == "decay" else math.inf)
        return given
    has = lambda x: isinstance(getattr(x, "hyperparams", None), dict)
    for node in jax.tree.leaves(opt_state, is_leaf=has):
        if has(node) and name in node.hyperparams:
            return node.hyperparams[name]
    raise ValueError(
        f"effective_step_size: pass {name}=, the value given to the optimizer (the state "
        f"records no hyperparameter values; only an optax.inject_hyperparams state does, "
        f"and none holding {name!r} was found in opt_state)."
    )
