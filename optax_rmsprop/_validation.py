"""Checks of user input: hyperparameters at construction, trees at update.

Every check raises early, names the argument, its value and the allowed range.
Values that are JAX arrays or tracers (``optax.inject_hyperparams`` passes
those) are not checked: their value is not known at construction time.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_rmsprop import _storage


def is_concrete_real(value: Any) -> bool:
    """A Python or NumPy real scalar (not a bool, not an array or tracer).

    Its value is known when the optimizer is built: it can be range-checked,
    and it can decide the state's structure (momentum 0: no buffer).
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    high_inclusive: bool = False,
) -> None:
    """Raises ValueError unless ``low <= value < high`` (or ``<= high``).

    Only Python numbers are checked; JAX arrays and tracers pass through.
    Non-finite values (nan, inf) are always rejected.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got the bool {value!r}.")
    if not is_concrete_real(value):
        if isinstance(value, (str, bytes)):
            raise ValueError(f"{name} must be a number, got {value!r}.")
        return
    upper_ok = value <= high if high_inclusive else value < high
    if not (math.isfinite(value) and low <= value and upper_ok):
        closing = "]" if high_inclusive else ")"
        upper = "inf" if math.isinf(high) else f"{high:g}"
        raise ValueError(
            f"{name} must be a finite number in [{low:g}, {upper}{closing}, got {value!r}."
        )


def check_rms_args(decay: Any, eps: Any, initial_scale: Any) -> None:
    """The checks shared by :func:`rmsprop` and :func:`scale_by_rms`."""
    check_range("decay", decay, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    check_range("initial_scale", initial_scale, 0.0)


INT8 = "int8"


def check_state_precision(
    state_dtype: Any, block_size: Any = None, min_quantized_size: Any = None
) -> _storage.StatePrecision:
    """``state_dtype`` and the 8-bit settings, checked, as one :class:`StatePrecision`.

    ``state_dtype`` is None, a floating dtype, or ``"int8"`` (8-bit
    block-quantized state). ``block_size`` and ``min_quantized_size`` are
    positive integers and only apply to ``"int8"``.
    """
    int8 = isinstance(state_dtype, str) and state_dtype == INT8
    int8 |= not isinstance(state_dtype, str) and _is_int8_dtype(state_dtype)
    for name, value in (("block_size", block_size), ("min_quantized_size", min_quantized_size)):
        if value is None:
            continue
        if not int8:
            raise ValueError(
                f"{name} applies to state_dtype='int8' only, got {name}={value!r} with "
                f"state_dtype={state_dtype!r}."
            )
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if int8:
        defaults = _storage.StatePrecision(int8=True)
        return _storage.StatePrecision(
            int8=True,
            block_size=int(block_size or defaults.block_size),
            min_size=int(min_quantized_size or defaults.min_size),
        )
    return _storage.StatePrecision(dtype=_floating_state_dtype(state_dtype))


def _is_int8_dtype(state_dtype: Any) -> bool:
    try:
        return state_dtype is not None and jnp.dtype(state_dtype) == jnp.int8
    except TypeError:
        return False


def _floating_state_dtype(state_dtype: Any) -> np.dtype | None:
    allowed = "None, a floating dtype (float16, bfloat16, float32, float64) or 'int8'"
    if state_dtype is None:
        return None
    try:
        dtype = jnp.dtype(state_dtype)
    except TypeError as err:
        raise ValueError(f"state_dtype must be {allowed}, got {state_dtype!r}.") from err
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"state_dtype must be {allowed}, got {dtype.name}. Complex parameters get "
            f"complex momentum buffers of the matching precision automatically."
        )
    return dtype


def check_tree_matches_state(tree: Any, state_tree: Any, *, what: str, where: str) -> None:
    """Raises ValueError, in words, when ``tree`` is not shaped like the state.

    Args:
      tree: the tree given to ``update`` (gradients or params).
      state_tree: a per-parameter tree from the optimizer state (e.g. ``nu``).
      what: how to call ``tree`` in the message ("gradient", "params").
      where: the function that raises, for the message.
    """
    got = jax.tree.structure(tree)
    want = jax.tree.structure(state_tree)
    if got != want:
        raise ValueError(
            f"{where}: the {what} tree does not match the tree the optimizer "
            f"state was initialised with. Pass {what} shaped like the params "
            f"given to init().\n  {what}: {got}\n  state:  {want}"
        )
    for path_and_leaf, state_leaf in zip(
        jax.tree_util.tree_leaves_with_path(tree),
        jax.tree.leaves(state_tree),
        strict=True,
    ):
        path, leaf = path_and_leaf
        state_shape = jnp.shape(state_leaf)
        if jnp.shape(leaf) != state_shape:
            raise ValueError(
                f"{where}: {what} leaf {jax.tree_util.keystr(path)} has shape "
                f"{jnp.shape(leaf)}, but the optimizer state was initialised "
                f"for shape {state_shape}."
            )
