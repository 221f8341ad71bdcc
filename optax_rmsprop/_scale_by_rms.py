"""``scale_by_rms``: divide each gradient by the root of its running mean square.

This is RMSProp without a learning rate, the building block of
:func:`optax_rmsprop.rmsprop`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_rmsprop import _dtypes, _tree, _validation

Tree = Any


class RmsDenominator(NamedTuple):
    """How the denominator is formed: static metadata, no arrays.

    It is a static pytree node (its values live in the tree structure), so it
    costs nothing at run time and lets :func:`optax_rmsprop.effective_step_size`
    rebuild the denominator from the state alone.

    Attributes:
      eps: ``eps`` as a Python float, or None when it is a JAX array (as under
        ``optax.inject_hyperparams``, whose state then holds it).
      eps_in_sqrt: whether ``eps`` sits inside the square root.
      decay: ``decay`` as a Python float (None when an array), for bias correction.
      bias_correction: whether the moments are divided by ``1 - decay**t``.
    """

    eps: float | None
    eps_in_sqrt: bool
    decay: float | None
    bias_correction: bool


jax.tree_util.register_static(RmsDenominator)


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`.

    Attributes:
      count: number of updates applied so far (int32 scalar, saturating), kept
        only when something needs it (bias correction, a learning-rate
        schedule); else None, so a plain step moves no extra buffers.
      nu: exponential moving average of ``|g|**2``, one real array per
        parameter, starting at ``initial_scale``.
      mu: exponential moving average of ``g`` when ``centered=True``
        (complex for complex parameters), else ``None``.
      denominator: the static :class:`RmsDenominator` settings.
    """

    count: jax.Array | None
    nu: Tree
    mu: Tree | None
    denominator: RmsDenominator


def _python_float(x: Any) -> float | None:
    return float(x) if _validation.is_python_number(x) else None


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|**2``, real for complex ``x`` (``(conj(x) * x).real``, as optax)."""
    if jnp.iscomplexobj(x):
        return (x.conj() * x).real
    return x * x


def denominator(
    nu: jax.Array,
    mu: jax.Array | None,
    correction: jax.Array | None,
    eps: Any,
    eps_in_sqrt: bool,
) -> jax.Array:
    """``sqrt(var + eps)`` or ``sqrt(var) + eps``, var from the bias-corrected moments.

    ``var = nu_hat`` or, centered, ``max(nu_hat - |mu_hat|**2, 0)``: rounding
    can make the difference negative, and the clamp keeps it from being NaN.
    ``correction`` is the bias-correction factor, or None for none.
    """
    var = nu if correction is None else nu * correction
    if mu is not None:
        mu_hat = mu if correction is None else mu * correction
        var = jnp.maximum(var - abs_sq(mu_hat), 0)
    return jnp.sqrt(var + eps) if eps_in_sqrt else jnp.sqrt(var) + eps


def init_rms_state(
    params: Tree,
    *,
    initial_scale: Any,
    centered: bool,
    decay: Any,
    eps: Any,
    eps_in_sqrt: bool,
    bias_correction: bool,
    state_dtype: Any,
    track_count: bool,
) -> ScaleByRmsState:
    """The initial :class:`ScaleByRmsState` for ``params``."""

    def nu_leaf(path, p):
        dtype = _dtypes.nu_dtype(p.dtype, state_dtype, jax.tree_util.keystr(path))
        return jnp.full_like(p, initial_scale, dtype=dtype)

    def mu_leaf(path, p):
        dtype = _dtypes.moment_dtype(p.dtype, state_dtype, jax.tree_util.keystr(path))
        return jnp.zeros_like(p, dtype=dtype)

    return ScaleByRmsState(
        count=jnp.zeros([], jnp.int32) if track_count or bias_correction else None,
        nu=jax.tree_util.tree_map_with_path(nu_leaf, params),
        mu=jax.tree_util.tree_map_with_path(mu_leaf, params) if centered else None,
        denominator=RmsDenominator(
            eps=_python_float(eps),
            eps_in_sqrt=bool(eps_in_sqrt),
            decay=_python_float(decay),
            bias_correction=bool(bias_correction),
        ),
    )


def to_compute_dtype(grads: Tree, nu: Tree) -> Tree:
    """Casts each gradient to the dtype its update is computed in."""
    return jax.tree.map(
        lambda g, n: _dtypes.cast(g, _dtypes.compute_dtype(g.dtype, n.dtype)), grads, nu
    )


def rms_step(
    grads: Tree,
    state: ScaleByRmsState,
    *,
    decay: Any,
    eps: Any,
    eps_in_sqrt: bool,
    bias_correction: bool,
) -> tuple[Tree, ScaleByRmsState]:
    """One RMS step on gradients already in their compute dtype.

    Returns ``g / denom`` in the compute dtype (the caller casts) and the new
    state, whose arrays keep their dtypes.
    """
    count = state.count
    if bias_correction:
        t = (count + 1).astype(jnp.result_type(float))
        correction = 1 / (1 - decay**t)
    else:
        correction = None
    one_minus_decay = 1 - decay
    centered = state.mu is not None

    def leaf(g, nu, mu):
        real = _dtypes.real_dtype(g.dtype)
        c = None if correction is None else correction.astype(real)
        new_nu = decay * _dtypes.cast(nu, real) + one_minus_decay * abs_sq(g)
        new_mu = decay * _dtypes.cast(mu, g.dtype) + one_minus_decay * g if centered else None
        scaled = g / denominator(new_nu, new_mu, c, eps, eps_in_sqrt)
        return (
            scaled,
            _dtypes.cast(new_nu, nu.dtype),
            None if mu is None else _dtypes.cast(new_mu, mu.dtype),
        )

    mu_tree = state.mu if centered else jax.tree.map(lambda _: None, state.nu)
    out = jax.tree.map(leaf, grads, state.nu, mu_tree)
    scaled, nu, mu = _tree.unzip(grads, out, 3)
    new_state = ScaleByRmsState(
        count=None if count is None else optax.safe_int32_increment(count),
        nu=nu,
        mu=mu if centered else None,
        denominator=state.denominator,
    )
    return scaled, new_state


def scale_by_rms(
    decay: Any = 0.9,
    eps: Any = 1e-8,
    *,
    initial_scale: Any = 0.0,
    eps_in_sqrt: bool = False,
    centered: bool = False,
    bias_correction: bool = False,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
    r"""Rescale updates by the root of the running mean of their squares.

    Per parameter, with ``t`` counting updates from 0:

    .. math::

      \nu_t = \rho\,\nu_{t-1} + (1-\rho)\,|g_t|^2, \qquad
      u_t = \frac{g_t}{\sqrt{\hat\nu_t} + \epsilon}

    (``eps_in_sqrt=True``: :math:`g_t / \sqrt{\hat\nu_t + \epsilon}`), where
    :math:`\hat\nu_t = \nu_t / (1 - \rho^{t+1})` with bias correction, and
    centered uses the variance :math:`\max(\hat\nu_t - |\hat m_t|^2, 0)`
    with :math:`m_t = \rho\,m_{t-1} + (1-\rho)\,g_t`. No learning rate is
    applied: chain it with ``optax.scale_by_learning_rate``.

    Args:
      decay: decay ``rho`` of the moving averages, in ``[0, 1)``.
      eps: ``epsilon`` added to the denominator, ``>= 0``.
      initial_scale: initial value of ``nu``, ``>= 0`` (TF1 uses 1).
      eps_in_sqrt: add ``eps`` inside the square root (TF, Keras, optax's
        default) instead of outside (PyTorch, this library's default).
      centered: divide by the standard deviation instead of the root mean
        square (Graves 2013).
      bias_correction: divide the moments by ``1 - decay**(t+1)`` (Adam style).
      state_dtype: dtype of the state; ``None`` keeps each parameter's dtype
        but never below float32.

    Returns:
      An ``optax.GradientTransformation`` whose updates have each gradient's
      dtype and whose state is a :class:`ScaleByRmsState`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax, optax_rmsprop
      >>> tx = optax.chain(optax_rmsprop.scale_by_rms(decay=0.9),
      ...                  optax.scale_by_learning_rate(0.1))
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([0.5, -0.5]), state)
      >>> updates  # -0.1 * g / (sqrt(0.1 * g**2) + eps)
      Array([-0.31622776,  0.31622776], dtype=float32)

    References:
      Hinton, `Lecture 6e: rmsprop
      <https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf>`_,
      2012.
      Graves, `Generating Sequences With Recurrent Neural Networks
      <https://arxiv.org/abs/1308.0850>`_, 2013.
    """
    _validate_rms_args(decay, eps, initial_scale)
    state_dtype = _validation.check_state_dtype(state_dtype)

    def init_fn(params):
        return init_rms_state(
            params,
            initial_scale=initial_scale,
            centered=centered,
            decay=decay,
            eps=eps,
            eps_in_sqrt=eps_in_sqrt,
            bias_correction=bias_correction,
            state_dtype=state_dtype,
            track_count=False,
        )

    def update_fn(updates, state, params=None):
        del params
        _validation.check_tree_matches_state(
            updates, state.nu, what="gradient", where="scale_by_rms.update"
        )
        scaled, state = rms_step(
            to_compute_dtype(updates, state.nu),
            state,
            decay=decay,
            eps=eps,
            eps_in_sqrt=eps_in_sqrt,
            bias_correction=bias_correction,
        )
        scaled = jax.tree.map(lambda s, g: _dtypes.cast(s, g.dtype), scaled, updates)
        return scaled, state

    return optax.GradientTransformation(init_fn, update_fn)


def _validate_rms_args(decay: Any, eps: Any, initial_scale: Any) -> None:
    _validation.check_range("decay", decay, 0.0, 1.0)
    _validation.check_range("eps", eps, 0.0)
    _validation.check_range("initial_scale", initial_scale, 0.0)
