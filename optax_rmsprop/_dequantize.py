"""``dequantize_state``: an 8-bit optimizer state as the float32 state it stands for."""

from __future__ import annotations

from typing import Any

import jax

from optax_rmsprop import _storage
from optax_rmsprop._rmsprop import RMSPropState
from optax_rmsprop._scale_by_rms import ScaleByRmsState
from optax_rmsprop._tree import Tree


def dequantize_state(opt_state: Any) -> Any:
    """Replaces every 8-bit buffer of every RMSProp state in ``opt_state`` by its values.

    The result is the state of the same optimizer built with float32 state
    (``state_dtype=None`` for float32 params): feed it to such an optimizer to
    continue in full precision, or inspect ``nu`` directly. States that hold
    no 8-bit buffer come back unchanged.

    Args:
      opt_state: any optimizer state (inside ``chain``, ``inject_hyperparams``
        and the like) holding :class:`RMSPropState` or :class:`ScaleByRmsState`.

    Returns:
      ``opt_state`` with codes turned into float32 values (complex64 for
      complex moments) and every ``*_scales`` field set to None.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_rmsprop
      >>> params = jnp.ones((4, 1024))
      >>> tx = optax_rmsprop.rmsprop(1e-2, state_dtype="int8")
      >>> state = tx.init(params)
      >>> state.rms.nu.dtype, optax_rmsprop.dequantize_state(state).rms.nu.dtype
      (dtype('uint8'), dtype('float32'))
    """
    is_state = lambda x: isinstance(x, (RMSPropState, ScaleByRmsState))  # noqa: E731
    return jax.tree.map(lambda x: _dequantize(x) if is_state(x) else x, opt_state, is_leaf=is_state)


def _dequantize(state: RMSPropState | ScaleByRmsState) -> RMSPropState | ScaleByRmsState:
    if isinstance(state, RMSPropState):
        nu = state.rms.nu  # never complex: tells complex moments by their extra axis
        momentum = _read_tree(state.momentum, state.momentum_scales, nu)
        return state._replace(rms=_dequantize(state.rms), momentum=momentum, momentum_scales=None)
    return state._replace(
        nu=_read_tree(state.nu, state.nu_scales, state.nu),
        mu=_read_tree(state.mu, state.mu_scales, state.nu),
        nu_scales=None,
        mu_scales=None,
    )


def _read_tree(values: Tree | None, scales: Tree | None, nu: Tree) -> Tree | None:
    if values is None or scales is None:
        return values
    scales = _storage.scales_or_nones(scales, values)
    return jax.tree.map(_storage.read_stored, values, scales, nu)
