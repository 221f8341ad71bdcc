"""``dequantize_state``: an 8-bit or 4-bit optimizer state as the float32 state it stands for."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from optax_rmsprop import _storage
from optax_rmsprop._state import RMSPropState, ScaleByRmsState, check_maps
from optax_rmsprop._tree import Tree


def dequantize_state(opt_state: Any, params: Tree | None = None, *, template: Any = None) -> Any:
    """Replaces every quantized buffer of every RMSProp state in ``opt_state`` by its values.

    The result is the state of the same optimizer built with float32 state
    (``state_dtype=None`` for float32 params): feed it to such an optimizer to
    continue in full precision, or inspect ``nu`` directly. States that hold
    no quantized buffer come back unchanged.

    A quantized state always counts its steps (its stochastic rounding needs
    the count); the float32 optimizer counts only with a schedule or bias
    correction. Pass that optimizer's state as ``template`` to get exactly its
    tree: the count is then dropped where ``template`` has none.

    Args:
      opt_state: any optimizer state (inside ``chain``, ``inject_hyperparams``
        and the like) holding :class:`RMSPropState` or :class:`ScaleByRmsState`.
      params: the parameters (or ``jax.ShapeDtypeStruct`` leaves of their
        shapes); needed for 4-bit state only, whose codes go two per byte and
        so do not say whether a last axis is odd.
      template: the state of the optimizer that will continue, e.g.
        ``jax.eval_shape(tx32.init, params)``, shaped like ``opt_state`` above
        its RMSProp states; or None to keep every step count.

    Returns:
      ``opt_state`` with codes turned into float32 values (complex64 for
      complex moments; a float16 ``nu``, stored by its square root, too) and
      every ``*_absmax`` field set to None.

    Raises:
      ValueError: for 4-bit state without ``params``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import optax_rmsprop
      >>> params = jnp.ones((4, 1024))
      >>> tx = optax_rmsprop.rmsprop(1e-2, state_dtype="int8")
      >>> state = tx.init(params)
      >>> state.rms.nu.dtype, optax_rmsprop.dequantize_state(state).rms.nu.dtype
      (dtype('uint8'), dtype('float32'))
      >>> tx32 = optax_rmsprop.rmsprop(1e-2)
      >>> full = optax_rmsprop.dequantize_state(state, template=tx32.init(params))
      >>> jax.tree.structure(full) == jax.tree.structure(tx32.init(params))
      True
    """

    def is_state(x: Any) -> bool:
        return isinstance(x, (RMSPropState, ScaleByRmsState))

    def dequantize(state: Any, like: Any = None) -> Any:
        if isinstance(state, RMSPropState):
            check_maps(state.rms)
            shapes = state.rms.nu if params is None else params
            momentum = _read(state.momentum, state.momentum_absmax, shapes, params, real=False)
            rms = dequantize(state.rms, None if like is None else like.rms)
            return RMSPropState(rms, momentum, None)
        if not isinstance(state, ScaleByRmsState):
            return state
        nu, mu = rms_moments(state, params)
        count = None if isinstance(like, ScaleByRmsState) and like.count is None else state.count
        return ScaleByRmsState(count, nu, mu, None, None)

    if template is None:
        return jax.tree.map(dequantize, opt_state, is_leaf=is_state)
    return jax.tree.map(dequantize, opt_state, template, is_leaf=is_state)


def rms_moments(state: ScaleByRmsState, params: Tree | None = None) -> tuple[Tree, Tree | None]:
    """``(nu, mu)`` of an RMS state as arrays (float32 where stored as codes).

    ``params`` (or their shapes) is needed for 4-bit codes only.
    """
    check_maps(state)
    like = state.nu if params is None else params
    nu = _read(state.nu, state.nu_absmax, like, params, real=True)
    return nu, _read(state.mu, state.mu_absmax, like, params, real=False)


def _read(
    values: Tree | None, absmax: Tree | None, like: Tree, params: Tree | None, *, real: bool
) -> Tree | None:
    """A stored buffer's values; ``like`` (the params, or ``nu``) gives each shape."""
    if values is None:
        return values
    encodings = _storage.stored_encodings(
        values, absmax, like, real=real, length_known=params is not None
    )

    def dtype(encoding: _storage.Encoding) -> np.dtype:  # float16 nu, stored by its root: f32
        return np.dtype(np.float32) if encoding.root else encoding.dtype

    dtypes = jax.tree.map(dtype, encodings, is_leaf=_storage.is_encoding)
    return _storage.read_tree(values, absmax, encodings, dtypes)
