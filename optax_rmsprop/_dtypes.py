"""The dtype policy: which dtype the optimizer state and arithmetic use.

By default the state is kept in the parameter's dtype but never below
float32, so bfloat16 and float16 parameters get float32 accumulators. An
explicit ``state_dtype`` is honoured (e.g. bfloat16 to halve the memory).
Arithmetic is done in at least float32 and at least the state's precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from optax_rmsprop._tree import Tree


def is_weak_scalar(value: object) -> bool:
    """A Python int or float, which JAX keeps weakly typed (a NumPy scalar is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, (bool, np.generic))


def real_dtype(dtype: np.dtype) -> np.dtype:
    """The real counterpart of ``dtype`` (complex64 -> float32)."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.dtype(jnp.finfo(dtype).dtype)
    return dtype


def _check_inexact(dtype: np.dtype, path: str) -> None:
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(
            f"RMSProp needs floating or complex parameters, but the leaf "
            f"{path or '<root>'} has dtype {dtype.name}. Leave it out with "
            f"optax.masked or optax.multi_transform (optax.set_to_zero)."
        )


def moment_dtype(param_dtype: np.dtype, state_dtype: np.dtype | None, path: str = "") -> np.dtype:
    """dtype of first-moment buffers (``mu``, momentum): complex if the param is."""
    param_dtype = jnp.dtype(param_dtype)
    _check_inexact(param_dtype, path)
    base = state_dtype if state_dtype is not None else param_dtype
    if state_dtype is None:
        base = jnp.promote_types(real_dtype(base), jnp.float32)
    if jnp.issubdtype(param_dtype, jnp.complexfloating):
        return jnp.promote_types(base, jnp.complex64)
    return jnp.dtype(base)


def nu_dtype(param_dtype: np.dtype, state_dtype: np.dtype | None, path: str = "") -> np.dtype:
    """dtype of the second-moment accumulator ``nu``: always real."""
    return real_dtype(moment_dtype(param_dtype, state_dtype, path))


def compute_dtype(grad_dtype: np.dtype, state_moment_dtype: np.dtype) -> np.dtype:
    """dtype the update arithmetic runs in: at least float32 and the state's."""
    dtype = jnp.promote_types(grad_dtype, state_moment_dtype)
    return jnp.promote_types(dtype, jnp.float32)


def to_compute_dtype(grads: Tree, nu: Tree) -> Tree:
    """Casts each gradient to the dtype its update is computed in (``nu``: the state's)."""
    return jax.tree.map(lambda g, n: cast(g, compute_dtype(g.dtype, n.dtype)), grads, nu)


def as_real(value: ArrayLike, like: jax.Array) -> ArrayLike:
    """A hyperparameter for ``like``'s arithmetic: Python numbers stay weakly typed,
    anything else is cast to ``like``'s real dtype."""
    if is_weak_scalar(value):
        return value
    return cast(value, real_dtype(like.dtype))


def cast(x: jax.Array, dtype: np.dtype) -> jax.Array:
    """``x`` as ``dtype``; ``x`` itself when it already is (strongly typed).

    ``astype`` to the same dtype is free at run time but not at trace time: a
    few of them per leaf cost about 10% of tracing a 2,000-leaf step.
    """
    if x.dtype == dtype and not _weakly_typed(x):
        return x
    return x.astype(dtype)


def _weakly_typed(x: jax.Array) -> bool:
    return jax.typeof(x).weak_type
