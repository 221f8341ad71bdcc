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

# The state dtypes the step computes in: each has a float32 (or float64) compute path.
FLOATING_STATE_DTYPES = ("float16", "bfloat16", "float32", "float64")
ALLOWED_STATE_DTYPES = (
    f"None, a floating dtype ({', '.join(FLOATING_STATE_DTYPES)}), 'int8' or 'int4'"
)
# What an argument may be besides a number, for the message of a value that is neither
# (rmsprop checks learning_rate only when it is not a callable).
_ALSO_ACCEPTED = {
    "learning_rate": ", a JAX array or an optax schedule (a callable of the step count)"
}


def is_concrete_real(value: Any) -> bool:
    """A Python or NumPy real scalar (not a bool, not an array or tracer).

    Its value is known when the optimizer is built: it can be range-checked,
    and it can decide the state's structure (momentum 0: no buffer).
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_array(value: Any) -> bool:
    """A JAX or NumPy array or scalar, or a tracer (of any JAX version): all have both."""
    return hasattr(value, "shape") and hasattr(value, "dtype")


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
    Non-finite values (nan, inf) are always rejected, and so is anything that
    is neither a number nor an array (None, a string), which would otherwise
    fail only at the first update.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got the bool {value!r}.")
    if not is_concrete_real(value):
        if not is_array(value):
            also = _ALSO_ACCEPTED.get(name, "")
            raise ValueError(f"{name} must be a number{also}, got {value!r}.")
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


def check_floating_state_dtype(dtype: np.dtype) -> None:
    """Raises ValueError unless ``dtype`` is a floating state dtype the step supports.

    float8 and other narrow floats are floating dtypes too, but the step has no
    compute path for them (its first update would fail on type promotion), and
    an integer dtype such as ``int2`` is not a state at all: the message names
    what is supported.
    """
    dtype = np.dtype(dtype)
    if dtype.name in FLOATING_STATE_DTYPES:
        return
    hint = ""
    if jnp.issubdtype(dtype, jnp.complexfloating):
        hint = (
            " Complex parameters get complex momentum buffers of the matching precision"
            " automatically."
        )
    raise ValueError(f"state_dtype must be {ALLOWED_STATE_DTYPES}, got {dtype.name}.{hint}")


def check_tree_matches_state(
    tree: Any, state_tree: Any, *, what: str, where: str, absmax: Any = None
) -> None:
    """Raises ValueError, in words, when ``tree`` is not shaped like the state.

    Args:
      tree: the tree given to ``update`` (gradients or params).
      state_tree: a per-parameter tree from the optimizer state (e.g. ``nu``).
      what: how to call ``tree`` in the message ("gradient", "params").
      where: the function that raises, for the message.
      absmax: ``state_tree``'s absmax tree when it may hold 4-bit codes
        (``(..., ceil(L / 2))`` for a parameter ``(..., L)``), else None.
    """
    got = jax.tree.structure(tree)
    want = jax.tree.structure(state_tree)
    if got != want:
        raise ValueError(
            f"{where}: the {what} tree does not match the tree the optimizer "
            f"state was initialised with. Pass {what} shaped like the params "
            f"given to init().\n  {what}: {got}\n  state:  {want}"
        )
    absmax_leaves = [None] * got.num_leaves if absmax is None else jax.tree.leaves(absmax)
    for path_and_leaf, state_leaf, absmax_leaf in zip(
        jax.tree_util.tree_leaves_with_path(tree),
        jax.tree.leaves(state_tree),
        absmax_leaves,
        strict=True,
    ):
        path, leaf = path_and_leaf
        shapes = _param_shapes(jnp.shape(state_leaf), absmax_leaf)
        if jnp.shape(leaf) not in shapes:
            raise ValueError(
                f"{where}: {what} leaf {jax.tree_util.keystr(path)} has shape "
                f"{jnp.shape(leaf)}, but the optimizer state was initialised "
                f"for shape {' or '.join(map(str, shapes))}."
            )


def _param_shapes(state_shape: tuple[int, ...], absmax: Any) -> list[tuple[int, ...]]:
    """The parameter shapes a state leaf of ``state_shape`` can stand for.

    Two for 4-bit codes (marked by the unit axis of their absmax): the
    packed last axis ``ceil(L / 2)`` is that of an odd or an even ``L``.
    """
    if absmax is None or jnp.ndim(absmax) != len(state_shape) + 1:
        return [state_shape]
    *lead, packed = state_shape
    return [(*lead, 2 * packed - 1), (*lead, 2 * packed)]
