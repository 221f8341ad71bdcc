"""``scale_by_rms``: divide each gradient by the root of its running mean square.

This is RMSProp without a learning rate, the building block of
:func:`optax_rmsprop.rmsprop`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from optax_rmsprop import (
    _dtypes,
    _math,
    _quantize,
    _rounding,
    _storage,
    _tree,
    _validation,
    _xla_hints,
)
from optax_rmsprop._tree import Tree


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`.

    Attributes:
      count: number of updates applied so far (int32 scalar, saturating), kept
        only when something needs it (bias correction, a learning-rate
        schedule, the stochastic rounding of a 16-bit, 8-bit or 4-bit state);
        else None, so a plain step moves no extra buffers.
      nu: exponential moving average of ``|g|**2``, one real array per
        parameter, starting at ``initial_scale``.
      mu: exponential moving average of ``g`` when ``centered=True``
        (complex for complex parameters), else ``None``.
      nu_absmax: with ``state_dtype="int8"`` or ``"int4"``, the float32
        per-block absmax of the quantized ``nu`` (whose leaves are then the
        ``uint8`` codes, or bytes of two 4-bit codes), a scalar 0 at leaves
        kept unquantized; else None. For 4-bit codes it has a trailing unit
        axis, the mark of their packing.
      mu_absmax: the same for ``mu`` (``int8`` codes, or bytes of two 4-bit codes).
      maps: with ``state_dtype="int8"`` or ``"int4"``, the version of the maps
        the codes index (an int32 scalar, 2); else None. A state saved with
        other maps lacks the field: ``flax.serialization`` refuses it by name,
        and one that orbax restores (the field None) is refused by the next
        update and by ``dequantize_state``.
    """

    count: jax.Array | None
    nu: Tree
    mu: Tree | None
    nu_absmax: Tree | None
    mu_absmax: Tree | None
    maps: jax.Array | None = None


def check_maps(state: ScaleByRmsState) -> None:
    """Raises if ``state`` holds codes but no ``maps`` mark: codes of earlier maps."""
    if state.nu_absmax is not None and state.maps is None:
        raise ValueError(
            "This quantized optimizer state has no `maps` field (it is None): it was saved "
            "by optax_rmsprop 0.1 or 0.2, whose 8-bit and 4-bit codes index other maps, and "
            "read on today's maps its codes would mean other values. Convert it with "
            "`optax_rmsprop.dequantize_state` of the version that saved it, and save that "
            "(or start the optimizer state afresh)."
        )


def to_compute_dtype(grads: Tree, nu: Tree) -> Tree:
    """Casts each gradient to the dtype its update is computed in."""
    return jax.tree.map(
        lambda g, n: _dtypes.cast(g, _dtypes.compute_dtype(g.dtype, n.dtype)), grads, nu
    )


@dataclasses.dataclass(frozen=True)
class RmsCore:
    """The RMS core, checked once: its settings, the state it starts from, the step it takes.

    :func:`scale_by_rms` and :func:`optax_rmsprop.rmsprop` each build one and
    call :meth:`init` and :meth:`step`; the hyperparameters may be JAX arrays
    (``optax.inject_hyperparams``), which are not checked.
    """

    decay: ArrayLike
    eps: ArrayLike
    initial_scale: ArrayLike
    eps_in_sqrt: bool
    centered: bool
    bias_correction: bool
    precision: _storage.StatePrecision

    @classmethod
    def checked(
        cls,
        *,
        decay: ArrayLike,
        eps: ArrayLike,
        initial_scale: ArrayLike,
        eps_in_sqrt: bool,
        centered: bool,
        bias_correction: bool,
        state_dtype: str | np.dtype | type | None,
        block_size: int | None,
        min_quantized_size: int | None,
    ) -> RmsCore:
        """The core for these arguments (as :func:`scale_by_rms` takes them), validated."""
        _validation.check_rms_args(decay, eps, initial_scale)
        return cls(
            decay=decay,
            eps=eps,
            initial_scale=initial_scale,
            eps_in_sqrt=bool(eps_in_sqrt),
            centered=bool(centered),
            bias_correction=bool(bias_correction),
            precision=_storage.StatePrecision.from_args(
                state_dtype, block_size, min_quantized_size
            ),
        )

    def init(self, params: Tree, *, track_count: bool) -> ScaleByRmsState:
        """The initial state; ``track_count`` keeps a step count (for a schedule)."""
        nu, nu_absmax = _storage.init_tree(params, self.initial_scale, self.precision, real=True)
        mu, mu_absmax = None, None
        if self.centered:
            mu, mu_absmax = _storage.init_tree(params, 0.0, self.precision, real=False)
        return ScaleByRmsState(
            count=jnp.zeros([], jnp.int32) if self._counts(track_count) else None,
            nu=nu,
            mu=mu,
            nu_absmax=nu_absmax,
            mu_absmax=mu_absmax,
            maps=_quantize.maps_marker() if self.precision.quantized else None,
        )

    def _counts(self, track_count: bool) -> bool:
        return track_count or self.bias_correction or self.precision.stochastic

    def step(
        self, grads: Tree, state: ScaleByRmsState, like: Tree, *, write: bool = True
    ) -> tuple[Tree, ScaleByRmsState | None]:
        """:func:`update_moments`, then :func:`rms_scale`, over gradients in their compute dtype.

        ``like`` (the params, or the raw gradients) fixes each buffer's layout.
        The buffers are read in the compute dtype and written back in their
        own storage. Returns ``g / denom`` in the compute dtype (the caller
        casts) and the new state (None with ``write=False``: ``g / denom`` alone).
        """
        check_maps(state)
        correction = None
        if self.bias_correction:
            correction = _math.bias_correction_factor(state.count, self.decay)
        layouts = _storage.layouts(like, self.precision, real=True)
        nu = _storage.stored_tree(state.nu, state.nu_absmax, layouts)
        mu = _tree.nones_like(grads)
        if self.centered:
            layouts = _storage.layouts(like, self.precision, real=False)
            mu = _storage.stored_tree(state.mu, state.mu_absmax, layouts)
        index = jax.tree.unflatten(jax.tree.structure(grads), range(len(jax.tree.leaves(grads))))
        leaf = functools.partial(self._leaf, count=state.count, correction=correction, write=write)
        scaled, new_nu, new_mu = _tree.unzip(grads, jax.tree.map(leaf, grads, nu, mu, index), 3)
        if not write:
            return scaled, None
        nu, nu_absmax = _tree.unzip(grads, new_nu, 2)
        nu_absmax = None if state.nu_absmax is None else nu_absmax
        mu, mu_absmax = None, None
        if self.centered:
            mu, mu_absmax = _tree.unzip(grads, new_mu, 2)
            mu_absmax = None if state.mu_absmax is None else mu_absmax
        count = None if state.count is None else optax.safe_int32_increment(state.count)
        return scaled, ScaleByRmsState(count, nu, mu, nu_absmax, mu_absmax, state.maps)

    def _leaf(
        self,
        g: jax.Array,
        nu: _storage.Stored,
        mu: _storage.Stored | None,
        index: int,
        *,
        count: jax.Array | None,
        correction: jax.Array | None,
        write: bool,
    ) -> tuple:
        """One leaf's step: ``(g / denom, (nu, nu_absmax), (mu, mu_absmax) or None)``."""
        nu_seed = mu_seed = None
        if self.precision.stochastic:  # a stream per buffer of each leaf
            nu_seed, mu_seed = (_rounding.stream_seed(count, 2 * index + i) for i in (0, 1))
        nu_value = nu.layout.read(nu.values, nu.absmax, _dtypes.real_dtype(g.dtype))
        mu_value = None if mu is None else mu.layout.read(mu.values, mu.absmax, g.dtype)
        if mu is not None and self.precision.quantized:
            # Rounded apart, the moments can break nu >= |mu|**2, which the exact ones
            # keep and which keeps the variance off 0; restored, the update keeps it too.
            nu_value = jnp.maximum(nu_value, _math.abs_sq(mu_value))
        new_nu, new_mu = _math.update_moments(g, nu_value, mu_value, decay=self.decay)
        nu_divisor, nu_stored = _as_stored(nu.layout, new_nu, nu.absmax, nu_seed)
        mu_divisor, mu_stored = None, None
        if mu is not None:
            mu_divisor, mu_stored = _as_stored(mu.layout, new_mu, mu.absmax, mu_seed)
        c = None if correction is None else correction.astype(_dtypes.real_dtype(g.dtype))
        scaled = _math.rms_scale(
            g, nu_divisor, mu_divisor, eps=self.eps, eps_in_sqrt=self.eps_in_sqrt, correction=c
        )
        return (scaled, nu_stored, mu_stored) if write else (scaled, None, None)


def _as_stored(
    layout: _storage.Layout, value: jax.Array, absmax: jax.Array | None, seed: jax.Array | None
) -> tuple[jax.Array, tuple]:
    """A new moment as the step divides by it, and as stored: ``(divisor, (values, absmax))``.

    A bfloat16 or float16 state divides by the moment as stored, read back
    (:func:`~optax_rmsprop._xla_hints.kept`): the step then never reads the old
    one, which XLA overwrites in place. 8-bit and 4-bit codes are coarse, so
    the step uses the moment it just computed, as bitsandbytes' kernels do.
    """
    values, absmax = layout.write(value, absmax, seed=seed)
    if layout.quantized or layout.stores_as_computed(value.dtype):
        return value, (values, absmax)
    if _xla_hints.keeps_read_back():
        values = _xla_hints.kept(values)
    return layout.read(values, None, value.dtype), (values, absmax)


def scale_by_rms(
    decay: ArrayLike = 0.9,
    eps: ArrayLike = 1e-8,
    *,
    initial_scale: ArrayLike = 0.0,
    eps_in_sqrt: bool = False,
    centered: bool = False,
    bias_correction: bool = False,
    state_dtype: str | np.dtype | type | None = None,
    block_size: int | None = None,
    min_quantized_size: int | None = None,
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

        .. warning::
          Unlike ``optax.scale_by_rms``, whose ``eps_in_sqrt`` defaults to True,
          the default here is False, as in :func:`optax_rmsprop.rmsprop` (one
          convention for the building block and the optimizer built from it).
          To replace ``optax.scale_by_rms``, pass ``eps_in_sqrt=True``.
      centered: divide by the standard deviation instead of the root mean
        square (Graves 2013).
      bias_correction: divide the moments by ``1 - decay**(t+1)`` (Adam style).
      state_dtype: dtype of the state; ``None`` keeps each parameter's dtype
        but never below float32; ``"int8"`` or ``"int4"`` stores it
        block-quantized in 8 or 4 bits (see :func:`rmsprop`).
      block_size: with ``state_dtype="int8"`` or ``"int4"``, elements per
        quantization block along the last axis (default 256 or 128).
      min_quantized_size: with a quantized ``state_dtype``, leaves with fewer
        elements stay unquantized (default 4096).

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
      Hinton, Lecture 6e, 2012; Graves, 2013 (centered); linked from
      :func:`optax_rmsprop.rmsprop`.
    """
    core = RmsCore.checked(
        decay=decay,
        eps=eps,
        initial_scale=initial_scale,
        eps_in_sqrt=eps_in_sqrt,
        centered=centered,
        bias_correction=bias_correction,
        state_dtype=state_dtype,
        block_size=block_size,
        min_quantized_size=min_quantized_size,
    )

    def init_fn(params):
        return core.init(params, track_count=False)

    def update_fn(updates, state, params=None):
        del params
        _validation.check_tree_matches_state(
            updates, state.nu, what="gradient", where="scale_by_rms.update", absmax=state.nu_absmax
        )
        scaled, state = core.step(to_compute_dtype(updates, state.nu), state, updates)
        scaled = jax.tree.map(lambda s, g: _dtypes.cast(s, g.dtype), scaled, updates)
        return scaled, state

    return optax.GradientTransformation(init_fn, update_fn)
