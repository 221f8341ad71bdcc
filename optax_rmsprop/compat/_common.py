"""Pieces every framework port shares: hyperparameter checks, lr, complex views."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_rmsprop import _tree, _validation
from optax_rmsprop._tree import Tree

Named = tuple[str, Any]  # (the framework's name of a hyperparameter, its value)


def check_hyperparameters(
    lr: Named, decay: Named, eps: Named, momentum: Any, weight_decay: Named = ("", None)
) -> None:
    """Range checks, each error under the framework's own name of the argument."""
    if not callable(lr[1]):
        _validation.check_range(*lr, 0.0)
    _validation.check_range(*decay, 0.0, 1.0, high_inclusive=True)
    _validation.check_range(*eps, 0.0)
    _validation.check_range("momentum", momentum, 0.0, 1.0)
    if weight_decay[1] is not None:
        _validation.check_range(*weight_decay, 0.0)


def learning_rate_at(learning_rate: optax.ScalarOrSchedule, count: jax.Array) -> Any:
    """The learning rate of the update with 0-based index ``count``."""
    return learning_rate(count) if callable(learning_rate) else learning_rate


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


def zeros_like_tree(params: Tree) -> Tree:
    return jax.tree.map(jnp.zeros_like, params)


def to_real(x: jax.Array) -> jax.Array:
    """``torch.view_as_real``: a complex array as a real one with a trailing (re, im) axis."""
    if jnp.iscomplexobj(x):
        return jnp.stack([x.real, x.imag], axis=-1)
    return x


def from_real(x: jax.Array, like: jax.Array) -> jax.Array:
    """The inverse of :func:`to_real` for an array shaped like ``like``."""
    if jnp.iscomplexobj(like):
        return jax.lax.complex(x[..., 0], x[..., 1]).astype(like.dtype)
    return x


def require_params(params: Any, where: str, why: str) -> None:
    if params is None:
        raise ValueError(f"{where}: {why} needs the parameters: call update(grads, state, params).")


def check_structure(grads: Tree, state_tree: Tree, where: str) -> None:
    _validation.check_tree_matches_state(grads, state_tree, what="gradient", where=where)


# -- the frame shared by the PyTorch-style ports (pytorch, timm) -------------------------
class PyTorchRMSpropState(NamedTuple):
    """State of :func:`pytorch`, named as in ``torch.optim.RMSprop.state``.

    Attributes:
      step: number of updates (int32 scalar; torch keeps a float32 tensor per param).
      square_avg: running average of the squared gradient, shaped like the params.
      grad_avg: running average of the gradient (``centered=True``), else None.
      momentum_buffer: the momentum buffer (``momentum > 0``), else None.
    """

    step: jax.Array
    square_avg: Tree
    grad_avg: Tree | None
    momentum_buffer: Tree | None


def init_torch_state(params: Tree, square_avg_init, *, centered: bool, momentum: float):
    """PyTorch-style lazy state, created eagerly: slots only for the options in use."""
    zeros = zeros_like_tree(params)
    return PyTorchRMSpropState(
        step=jnp.zeros([], jnp.int32),
        square_avg=jax.tree.map(square_avg_init, params),
        grad_avg=zeros if centered else None,
        momentum_buffer=zeros if momentum > 0 else None,
    )


def torch_style_update(
    leaf,
    updates,
    state: PyTorchRMSpropState,
    params,
    *,
    where: str,
    lr,
    weight_decay: float,
    centered: bool,
    momentum: float,
) -> tuple[Tree, PyTorchRMSpropState]:
    """The shared frame of PyTorch-style updates: checks, slots, the per-leaf map, new state.

    ``leaf(g, p, square_avg, grad_avg, momentum_buffer, lr_t)`` returns
    ``(update, square_avg, grad_avg, momentum_buffer)`` (unused slots as None).
    """
    check_structure(updates, state.square_avg, where)
    if weight_decay != 0:
        require_params(params, where, f"weight_decay={weight_decay}")
    lr_t = learning_rate_at(lr, state.step)
    none = _tree.nones_like(state.square_avg)
    out = jax.tree.map(
        lambda g, p, v, m, b: leaf(g, p, v, m, b, lr_t),
        updates,
        params if params is not None else none,
        state.square_avg,
        state.grad_avg if centered else none,
        state.momentum_buffer if momentum > 0 else none,
    )
    u, v, m, b = _tree.unzip(updates, out, 4)
    return u, PyTorchRMSpropState(
        step=optax.safe_int32_increment(state.step),
        square_avg=v,
        grad_avg=m if centered else None,
        momentum_buffer=b if momentum > 0 else None,
    )


def torch_style(
    kernel, *, square_avg_init, where: str, lr, alpha: float, eps: float, weight_decay: float,
    momentum: float, centered: bool, **options,
) -> optax.GradientTransformationExtraArgs:  # fmt: skip
    """A PyTorch-style optimizer from its per-parameter ``kernel`` (see :func:`torch_style_update`).

    The hyperparameters are checked under PyTorch's names, then passed to
    ``kernel`` with ``options`` (the port's own extras). ``square_avg_init``
    makes the initial mean square from a parameter (``jnp.zeros_like`` for
    PyTorch, ``jnp.ones_like`` for timm).
    """
    check_hyperparameters(("lr", lr), ("alpha", alpha), ("eps", eps), momentum,
                          ("weight_decay", weight_decay))  # fmt: skip
    settings = dict(alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum)
    kernel = functools.partial(kernel, centered=centered, **settings, **options)

    def init_fn(params):
        return init_torch_state(params, square_avg_init, centered=centered, momentum=momentum)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        return torch_style_update(kernel, updates, state, params, where=where, lr=lr,
                                  weight_decay=weight_decay, centered=centered,
                                  momentum=momentum)  # fmt: skip

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
