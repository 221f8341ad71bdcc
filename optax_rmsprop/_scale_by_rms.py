"""``scale_by_rms``: divide each gradient by the root of its running mean square.

This is RMSProp without a learning rate, the building block of
:func:`optax_rmsprop.rmsprop`. Its :class:`RmsCore` reads the moments from the
state, updates them (:mod:`optax_rmsprop._math`), writes them back
(:mod:`optax_rmsprop._storage`) and scales the gradient, each a step of its own,
so that :func:`~optax_rmsprop.rmsprop`'s momentum path can scale the gradient
again from the moments it read.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from optax_rmsprop import _dtypes, _math, _rounding, _state, _storage, _validation, _xla_hints
from optax_rmsprop._state import ScaleByRmsState
from optax_rmsprop._tree import Tree


class Moments(NamedTuple):
    """``nu`` and centered ``mu`` of a whole tree, in the compute dtype, and the
    bias-correction factor they are divided by (None for none)."""

    nu: Tree
    mu: Tree | None
    correction: jax.Array | None


class Stored(NamedTuple):
    """The moments as the state stores them."""

    nu: _storage.Buffer
    mu: _storage.Buffer | None

    def after(self, hints: _xla_hints.Hints, buffer: Tree) -> Stored:
        """Written after the momentum ``buffer``, and one moment after the other.

        A centered quantized ``nu`` reads the old ``mu``: where the new codes
        overwrite the old ones in place (8-bit codes), ``mu`` goes last. 4-bit
        codes never are (they come out of a reduction, and the step reads the
        old ones): XLA copies the old buffers, and with ``nu`` last it reuses
        more of the copies' memory (int4 centered momentum: 0.91 B/param of
        temporaries, 1.13 with ``mu`` last).
        """
        nu = self.nu.after(hints, buffer)
        if self.mu is None:
            return Stored(nu, None)
        mu = self.mu.after(hints, buffer)
        nu = nu.codes_after(hints, mu.values, packed=True)
        return Stored(nu, mu.codes_after(hints, nu.values, packed=False))


@dataclasses.dataclass(frozen=True)
class RmsCore:
    """The RMS core, checked once: its settings, the state it starts from, the step it takes.

    :func:`scale_by_rms` and :func:`optax_rmsprop.rmsprop` each build one and
    call :meth:`init` and :meth:`step` (or its parts: :meth:`read`,
    :meth:`update`, :meth:`write`, :meth:`scale`); the hyperparameters may be
    JAX arrays (``optax.inject_hyperparams``), which are not checked.
    """

    decay: ArrayLike
    eps: ArrayLike
    initial_scale: ArrayLike
    eps_in_sqrt: bool
    centered: bool
    bias_correction: bool
    precision: _storage.StatePrecision
    hints: _xla_hints.Hints = _xla_hints.Hints()

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
        """The core for these arguments (as :func:`scale_by_rms` takes them), validated.

        The XLA hints are those chosen now (:func:`optax_rmsprop._xla_hints.chosen`).
        """
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
            hints=_xla_hints.chosen(),
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
            maps=_state.maps_mark() if self.precision.quantized else None,
        )

    def _counts(self, track_count: bool) -> bool:
        return track_count or self.bias_correction or self.precision.stochastic

    def step(self, grads: Tree, state: ScaleByRmsState, like: Tree) -> tuple[Tree, ScaleByRmsState]:
        """:meth:`read`, :meth:`update`, :meth:`write`, then :meth:`scale`.

        ``grads`` are in their compute dtype; ``like`` (the params, or the raw
        gradients) fixes each buffer's encoding. Returns ``g / denom`` in the
        compute dtype (the caller casts) and the new state.
        """
        stored, old = self.read(grads, state, like)
        stored, divisors = self.write(stored, self.update(grads, old), state.count)
        return self.scale(grads, divisors), self.state(stored, state)

    def read(self, grads: Tree, state: ScaleByRmsState, like: Tree) -> tuple[Stored, Moments]:
        """The moments as stored, and their values in ``grads``' compute dtypes."""
        _state.check_maps(state)
        nu = _storage.Buffer.of(state.nu, state.nu_absmax, grads, like, self.precision, real=True)
        nu_value, mu, mu_value = nu.read(), None, None
        if self.centered:
            mu = _storage.Buffer.of(
                state.mu, state.mu_absmax, grads, like, self.precision, real=False
            )
            mu_value = mu.read()
            if self.precision.quantized:
                # Rounded apart, the moments can break nu >= |mu|**2, which the exact ones
                # keep and which keeps the variance off 0; restored, the update keeps it too.
                nu_value = jax.tree.map(
                    lambda n, m: jnp.maximum(n, _math.abs_sq(m)), nu_value, mu_value
                )
        correction = None
        if self.bias_correction:
            correction = _math.bias_correction_factor(state.count, self.decay)
        return Stored(nu, mu), Moments(nu_value, mu_value, correction)

    def update(self, grads: Tree, old: Moments) -> Moments:
        """The moments after one more gradient (``_math.update_nu``, ``_math.update_mu``)."""
        nu = jax.tree.map(lambda g, n: _math.update_nu(g, n, self.decay), grads, old.nu)
        mu = None
        if old.mu is not None:
            mu = jax.tree.map(lambda g, m: _math.update_mu(g, m, self.decay), grads, old.mu)
        return Moments(nu, mu, old.correction)

    def write(
        self, stored: Stored, new: Moments, count: jax.Array | None
    ) -> tuple[Stored, Moments]:
        """``new`` written over ``stored``, and the moments the step divides by.

        A bfloat16 or float16 state divides by the moment as stored, read back:
        the step then never reads the old one, which XLA overwrites in place.
        8-bit and 4-bit codes are coarse, so the step uses the moment it just
        computed, as bitsandbytes' kernels do.
        """
        n = len(jax.tree.leaves(new.nu))
        nu = stored.nu.write(new.nu, seeds=self._seeds(count, n, 0))
        nu, nu_divisor = nu.read_back(new.nu, self.hints, codes=False)
        mu, mu_divisor = None, None
        if stored.mu is not None:
            mu = stored.mu.write(new.mu, seeds=self._seeds(count, n, 1))
            mu, mu_divisor = mu.read_back(new.mu, self.hints, codes=False)
        return Stored(nu, mu), Moments(nu_divisor, mu_divisor, new.correction)

    def _seeds(self, count: jax.Array | None, n: int, buffer: int) -> list | None:
        """Each leaf's stochastic-rounding seed for ``nu`` (``buffer`` 0) or ``mu`` (1)."""
        if not self.precision.stochastic:
            return None
        salts = self.hints.unfolded([2 * i + buffer for i in range(n)])
        return [_rounding.stream_seed(count, salt) for salt in salts]

    def scale(self, grads: Tree, moments: Moments) -> Tree:
        """``g / denom`` (:func:`~optax_rmsprop._math.rms_scale`) in the compute dtype."""

        def leaf(g, nu, mu=None):
            c = moments.correction
            c = None if c is None else c.astype(_dtypes.real_dtype(g.dtype))
            return _math.rms_scale(
                g, nu, mu, eps=self.eps, eps_in_sqrt=self.eps_in_sqrt, correction=c
            )

        if moments.mu is None:
            return jax.tree.map(leaf, grads, moments.nu)
        return jax.tree.map(leaf, grads, moments.nu, moments.mu)

    def rescale(self, grads: Tree, old: Moments) -> Tree:
        """``g / denom`` again from the moments read (8-bit and 4-bit codes: as computed)."""
        return self.scale(grads, self.update(grads, old))

    def rescale_stored(
        self, grads: Tree, read: Stored, old: Moments, count: jax.Array | None
    ) -> Tree:
        """``g / denom`` again from the moments read (``read``, ``old``), divided by the
        new moments as :meth:`write` gives them (bfloat16, float16: rounded, read back)."""
        return self.scale(grads, self.write(read, self.update(grads, old), count)[1])

    def state(self, stored: Stored, state: ScaleByRmsState) -> ScaleByRmsState:
        """The state after the step: ``stored``, and the count one more."""
        count = None if state.count is None else optax.safe_int32_increment(state.count)
        mu = mu_absmax = None
        if stored.mu is not None:
            mu, mu_absmax = stored.mu.values, stored.mu.absmax
        return ScaleByRmsState(count, stored.nu.values, mu, stored.nu.absmax, mu_absmax, state.maps)


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
        scaled, state = core.step(_dtypes.to_compute_dtype(updates, state.nu), state, updates)
        scaled = jax.tree.map(lambda s, g: _dtypes.cast(s, g.dtype), scaled, updates)
        return scaled, state

    return optax.GradientTransformation(init_fn, update_fn)
