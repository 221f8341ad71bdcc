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
      complex moments) and every ``*_absmax`` field set to None.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_rmsprop
      >>> params = jnp.ones((4, 1024))
      >>> tx = optax_rmsprop.rmsprop(1e-2, state_dtype="int8")
      >>> state = tx.init(params)
      >>> state.rms.nu.dtype, optax_rmsprop.dequantize_state(state).rms.nu.dtype
      (dtype('uint8'), dtype('float32'))
    """

    def is_state(x: Any) -> bool:
        return isinstance(x, (RMSPropState, ScaleByRmsState))

    return jax.tree.map(lambda x: _dequantize(x) if is_state(x) else x, opt_state, is_leaf=is_state)


def rms_moments(state: ScaleByRmsState) -> tuple[Tree, Tree | None]:
    """``(nu, mu)`` of an RMS state as arrays (float32 where stored as codes)."""
    nu = _read(state.nu, state.nu_absmax, state.nu, real=True)
    return nu, _read(state.mu, state.mu_absmax, state.nu, real=False)


def _dequantize(state: RMSPropState | ScaleByRmsState) -> RMSPropState | ScaleByRmsState:
    if isinstance(state, RMSPropState):
        momentum = _read(state.momentum, state.momentum_absmax, state.rms.nu, real=False)
        return RMSPropState(_dequantize(state.rms), momentum, None)
    nu, mu = rms_moments(state)
    return ScaleByRmsState(state.count, nu, mu, None, None)


def _read(values: Tree | None, absmax: Tree | None, nu: Tree, *, real: bool) -> Tree | None:
    """A stored buffer's values; ``nu`` (the same parameters' ``nu``) gives each rank."""
    if values is None or absmax is None:
        return values
    layouts = _storage.stored_layouts(values, absmax, nu, real=real)
    dtypes = jax.tree.map(lambda layout: layout.dtype, layouts, is_leaf=_storage.is_layout)
    return _storage.read_tree(values, absmax, layouts, dtypes)
