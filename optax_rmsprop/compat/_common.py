"""Small pieces every framework port shares: checks, hyperparameter values, complex views."""

from __future__ import annotations

import inspect
import math
from collections.abc import Collection
from typing import Any

import jax
import jax.numpy as jnp

from optax_rmsprop import _validation

Named = tuple[str, Any]  # (the framework's name of a hyperparameter, its value)

# The allowed range of each kind of hyperparameter: (low, high, high inclusive).
RANGES = {
    "lr": (0.0, math.inf, False),
    "decay": (0.0, 1.0, True),
    "eps": (0.0, math.inf, False),
    "momentum": (0.0, 1.0, False),
    "weight_decay": (0.0, math.inf, False),
}


def check_hyperparameters(callables: Collection[str] = (), **named: Named) -> None:
    """Range checks, each error under the framework's own name of the argument.

    Args:
      callables: the framework names that may be callables of the step count
        (the framework takes a schedule or callable there); any other callable
        is refused.
      **named: ``kind=(name, value)`` with ``kind`` a key of :data:`RANGES`;
        a value of None is not checked (an absent option).
    """
    for kind, (name, value) in named.items():
        if value is None:
            continue
        if callable(value):
            check_callable(name, value, allowed=name in callables)
            continue
        low, high, high_inclusive = RANGES[kind]
        _validation.check_range(name, value, low, high, high_inclusive=high_inclusive)


def check_callable(name: str, value: Any, *, allowed: bool) -> None:
    """A callable hyperparameter must be allowed there and take the step count."""
    if not allowed:
        raise ValueError(
            f"{name} must be a number: the framework takes no callable for it, got {value!r}."
        )
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return
    try:
        signature.bind(0)
    except TypeError as err:
        raise ValueError(
            f"{name}: a callable hyperparameter is called with the 0-based step count, as an "
            f"optax schedule (write `lambda count: ...`), got {value!r} with signature "
            f"{signature}."
        ) from err


def check_flags(**flags: Any) -> None:
    """Boolean options must be bools (a callable or a string would silently be True)."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}.")


def value_at(value: Any, count: jax.Array) -> Any:
    """A hyperparameter's value for the update with 0-based index ``count``."""
    return value(count) if callable(value) else value


def as_dtype_of(value: Any, like: jax.Array) -> jax.Array:
    """``value`` as a scalar of ``like``'s dtype, as frameworks cast hyperparameters."""
    return jnp.asarray(value, dtype=like.dtype)


def floatx(value: Any) -> jax.Array:
    """A hyperparameter as TF and Keras hold it: a float32 tensor or variable.

    Cast to a float64 variable's dtype later, it keeps its float32 rounding;
    reproducing that is what makes float64 trajectories agree to 1e-12.
    """
    return jnp.asarray(value, jnp.float32)


FLOATX = ("float16", "bfloat16", "float32", "float64")


def check_floatx(floatx: str) -> jnp.dtype:
    """Keras's ``floatx`` name as a dtype; a ValueError names the allowed values."""
    if floatx not in FLOATX:
        raise ValueError(f"floatx must be one of {', '.join(FLOATX)}, got {floatx!r}.")
    return jnp.dtype(floatx)


def to_real(x: jax.Array) -> jax.Array:
    """``torch.view_as_real``: a complex array as a real one with a trailing (re, im) axis."""
    if jnp.iscomplexobj(x):
        return jnp.stack([x.real, x.imag], axis=-1)
    return x


def from_real(x: jax.Array | None, like: jax.Array) -> jax.Array | None:
    """The inverse of :func:`to_real` for an array shaped like ``like`` (None stays None)."""
    if x is not None and jnp.iscomplexobj(like):
        return jax.lax.complex(x[..., 0], x[..., 1]).astype(like.dtype)
    return x
