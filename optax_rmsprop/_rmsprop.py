"""``rmsprop``: the complete optimizer: learning rate, momentum, weight decay.

It is one transformation around the RMS core (:class:`RmsCore`, shared with
:func:`scale_by_rms`), not an ``optax.chain`` of ``scale_by_rms``, a learning
rate and ``optax.trace`` as optax builds its own. A chain keeps one state per
link: a step count for the schedule in one, the buffers in others, and each
link is traced and dispatched on its own. Here the state holds exactly the
buffers the options need (a count only with a schedule or bias correction), so
the compiled step has the same entry parameters, kernels and bytes as
``optax.rmsprop``'s, never more (``tests/test_compiled_cost.py`` checks all 12
option sets), while adding the options optax lacks: the learning rate inside or
outside the momentum buffer, coupled and decoupled weight decay, ``maximize``
and the state precisions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
import optax
from jax.typing import ArrayLike

from optax_rmsprop import (
    _caution,
    _dtypes,
    _momentum,
    _scale_by_rms,
    _storage,
    _validation,
    _weight_decay,
)
from optax_rmsprop._state import RMSPropState
from optax_rmsprop._tree import Tree


def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: ArrayLike = 0.9,
    eps: ArrayLike = 1e-8,
    *,
    initial_scale: ArrayLike = 0.0,
    eps_in_sqrt: bool = False,
    centered: bool = False,
    momentum: ArrayLike | None = None,
    nesterov: bool = False,
    lr_in_momentum: bool = True,
    bias_correction: bool = False,
    weight_decay: ArrayLike = 0.0,
    decoupled_weight_decay: bool = False,
    weight_decay_mask: Tree | Callable[[Tree], Tree] | None = None,
    maximize: bool = False,
    caution: bool = False,
    state_dtype: str | np.dtype | type | None = None,
    block_size: int | None = None,
    min_quantized_size: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""RMSProp, with every variant the major frameworks use.

    Per parameter, with ``t`` counting updates from 0 and :math:`\eta_t` the
    learning rate (a schedule is called with ``t``):

    .. math::

      \nu_t &= \rho\,\nu_{t-1} + (1-\rho)\,|g_t|^2,
      \qquad \nu_{-1} = \text{initial\_scale} \\
      s_t &= g_t / (\sqrt{\nu_t} + \epsilon) \\
      p_{t+1} &= p_t - \eta_t\, s_t

    Options, in the order they act: ``maximize`` negates ``g``; coupled
    weight decay adds ``weight_decay * p`` to ``g``; ``centered`` uses
    :math:`\max(\hat\nu_t - |\hat m_t|^2, 0)` with
    :math:`m_t = \rho m_{t-1} + (1-\rho) g_t`; ``bias_correction`` divides
    the moments by :math:`1-\rho^{t+1}`; ``eps_in_sqrt`` uses
    :math:`\sqrt{\hat\nu_t + \epsilon}`; ``momentum`` :math:`\mu` keeps a
    buffer :math:`b_t = \mu b_{t-1} + \eta_t s_t` (step :math:`b_t`) or, with
    ``lr_in_momentum=False`` (PyTorch), :math:`b_t = \mu b_{t-1} + s_t` (step
    :math:`\eta_t b_t`); ``nesterov`` looks ahead one step; decoupled weight
    decay adds :math:`\eta_t \cdot \text{wd} \cdot p` to the step.

    Args:
      learning_rate: a float ``>= 0``, a JAX array, or an optax schedule of
        the step count; anything else is refused at construction.
      decay: decay ``rho`` of the moving averages, in ``[0, 1)``.
      eps: ``epsilon`` in the denominator, ``>= 0``. Not negligible: DQN
        used 0.01, Inception 1.0. With ``eps=0``, a coordinate whose gradient
        and ``nu`` are both 0 (the first step with ``initial_scale=0``, any
        step with ``decay=0``) becomes NaN, as in PyTorch and optax.
      initial_scale: initial value of ``nu``, ``>= 0``. PyTorch and Keras use
        0, TF1 and timm 1.
      eps_in_sqrt: ``sqrt(nu + eps)`` (TF, Keras, optax's default) instead of
        ``sqrt(nu) + eps`` (PyTorch, and this function's default).
      centered: divide by the estimated standard deviation (Graves 2013).
      momentum: ``None`` (or 0) for no momentum, else a float in ``[0, 1)``.
      nesterov: Nesterov momentum; needs ``momentum``.
      lr_in_momentum: the buffer accumulates ``lr``-scaled steps (optax, TF,
        Keras) if True, raw steps scaled by the current ``lr`` (PyTorch) if
        False. Identical at constant ``lr``.
      bias_correction: divide the moments by ``1 - decay**(t+1)``. With
        ``eps_in_sqrt=False`` this is Adam with ``b1=0``.
      weight_decay: ``>= 0``.
      decoupled_weight_decay: False: L2, ``g += wd * p`` before everything
        (PyTorch, timm). True: ``p -= lr * wd * p`` after the step (AdamW).
      weight_decay_mask: a tree of bools shaped like the params (or a prefix
        of it), or a callable returning one; True where decay applies.
      maximize: ascend the objective instead of descending it.
      caution: the cautious variant (Liang et al., 2024; timm's
        ``crmsproptf``): the momentum step is masked where its sign disagrees
        with the gradient and rescaled by the kept fraction of each tensor;
        the buffer itself stays unmasked. Needs ``momentum`` (without it every
        step already agrees with the gradient).
      state_dtype: dtype of ``nu``, ``mu`` and the momentum buffer. ``None``
        keeps each parameter's dtype but never below float32 (bf16/fp16
        params get float32 accumulators); ``jnp.bfloat16`` halves the memory;
        ``"int8"`` stores each buffer block-quantized in 8 bits, a quarter of
        float32's memory: 8-bit codes (``nu`` on a binary floating-point grid
        without zero, written with stochastic rounding; the first moments on a
        signed dynamic map) and one float32 absmax per block along the last
        axis; the step dequantizes, updates in float32 (float64 for float64
        params) and re-quantizes. ``"int4"``: 4-bit codes, two per byte, an
        eighth of float32's memory (``nu`` on powers of two, the first moments
        on a signed dynamic map). A leaf whose last axis is too short for the
        codes and absmax to take fewer bytes than float32 (length 1) keeps
        float32 state. A non-finite gradient makes its whole block non-finite
        from the next step (``optax.apply_if_finite`` skips such steps). Below
        float32, the step moves the params by the new momentum buffer as
        stored (bfloat16, 8-bit codes; as PyTorch's in-place update does) and
        divides by the new ``nu`` and ``mu`` as computed (rounded to a
        bfloat16 or float16 state's dtype, not to 8-bit or 4-bit codes). See
        the state-precision docs page.
      block_size: with ``state_dtype="int8"`` or ``"int4"``, elements per
        quantization block along the last axis (default 256 for int8, as
        bitsandbytes; 128 for int4, as torchao; even for int4).
      min_quantized_size: with ``state_dtype="int8"`` or ``"int4"``, leaves
        with fewer elements (and scalars) keep the default float state
        (default 4096).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its state is an
      :class:`RMSPropState`; updates come back in each parameter's dtype.

    Raises:
      ValueError: at construction, for a Python number out of range (JAX
        arrays, as passed by ``optax.inject_hyperparams``, are not checked);
        at update, for a gradient tree unlike the state, or weight decay
        without ``params``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import optax, optax_rmsprop
      >>> loss = lambda p: jnp.sum((p - 3.0) ** 2)
      >>> tx = optax_rmsprop.rmsprop(learning_rate=0.1)
      >>> params = jnp.zeros(2)
      >>> state = tx.init(params)
      >>> for _ in range(100):
      ...   grads = jax.grad(loss)(params)
      ...   updates, state = tx.update(grads, state, params)
      ...   params = optax.apply_updates(params, updates)
      >>> bool(jnp.allclose(params, 3.0, atol=0.1))
      True

    References:
      Hinton, `Lecture 6e: rmsprop
      <https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf>`_,
      2012.
      Graves, `Generating Sequences With Recurrent Neural Networks
      <https://arxiv.org/abs/1308.0850>`_, 2013.
      Loshchilov and Hutter, `Decoupled Weight Decay Regularization
      <https://arxiv.org/abs/1711.05101>`_, 2019.
      Liang, Chen, Liu and Liu, `Cautious Optimizers
      <https://arxiv.org/abs/2411.16085>`_, 2024.
    """
    use_momentum = _checked_momentum(learning_rate, momentum, weight_decay, nesterov, caution)
    core = _scale_by_rms.RmsCore.checked(
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
    optimizer = _RMSProp(
        core=core,
        learning_rate=learning_rate,
        momentum=momentum if use_momentum else None,
        nesterov=nesterov,
        lr_in_momentum=lr_in_momentum,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        weight_decay_mask=weight_decay_mask,
        maximize=maximize,
        caution=caution,
    )
    return optax.GradientTransformationExtraArgs(optimizer.init, optimizer.update)


def _checked_momentum(
    learning_rate: optax.ScalarOrSchedule,
    momentum: ArrayLike | None,
    weight_decay: ArrayLike,
    nesterov: bool,
    caution: bool,
) -> bool:
    """Checks :func:`rmsprop`'s arguments beside the RMS core's; True if momentum is used."""
    if not callable(learning_rate):
        _validation.check_range("learning_rate", learning_rate, 0.0)
    if momentum is not None:
        _validation.check_range("momentum", momentum, 0.0, 1.0)
    _validation.check_range("weight_decay", weight_decay, 0.0)
    use_momentum = momentum is not None and not (
        _validation.is_concrete_real(momentum) and momentum == 0
    )
    if nesterov and not use_momentum:
        raise ValueError(f"nesterov=True needs momentum in (0, 1), got momentum={momentum!r}.")
    if caution and not use_momentum:
        raise ValueError(
            f"caution=True needs momentum in (0, 1), got momentum={momentum!r}: without "
            "momentum every step already agrees in sign with the gradient."
        )
    return use_momentum


@dataclasses.dataclass(frozen=True)
class _RMSProp:
    """:func:`rmsprop`'s checked settings, and its ``init`` and ``update``."""

    core: _scale_by_rms.RmsCore
    learning_rate: optax.ScalarOrSchedule
    momentum: ArrayLike | None
    nesterov: bool
    lr_in_momentum: bool
    weight_decay: ArrayLike
    decoupled_weight_decay: bool
    weight_decay_mask: Tree | Callable[[Tree], Tree] | None
    maximize: bool
    caution: bool

    @property
    def decays_weights(self) -> bool:
        wd = self.weight_decay
        return not (_validation.is_concrete_real(wd) and wd == 0)

    def init(self, params: Tree) -> RMSPropState:
        rms = self.core.init(params, track_count=callable(self.learning_rate))
        buffer, absmax = None, None
        if self.momentum is not None:
            buffer, absmax = _storage.init_tree(params, 0.0, self.core.precision, real=False)
        return RMSPropState(rms=rms, momentum=buffer, momentum_absmax=absmax)

    def update(self, updates, state, params=None, **extra_args):
        del extra_args
        self._check_args(updates, state, params)
        like = updates if params is None else params
        g = self._gradient(updates, state, params)
        core = self.core
        count = state.rms.count
        read, old = core.read(g, state.rms, like)
        stored, divisors = core.write(read, core.update(g, old), count)
        scaled = core.scale(g, divisors)
        lr = self.learning_rate(count) if callable(self.learning_rate) else self.learning_rate
        buffer = None
        if self.momentum is not None:
            step, buffer = self._with_momentum(scaled, g, read, old, lr, state, like)
            stored = stored.after(core.hints, buffer.values)
        else:
            step = jax.tree.map(lambda s: s * _dtypes.as_real(lr, s), scaled)
        if self.caution:
            step = jax.tree.map(_caution.cautious, step, g)
        if self.decays_weights and self.decoupled_weight_decay:
            step = _weight_decay.add_decoupled_decay(
                step, params, lr, self.weight_decay, self.weight_decay_mask
            )
        new_updates = jax.tree.map(lambda s, p: _dtypes.cast(-s, p.dtype), step, like)
        rms = core.state(stored, state.rms)
        if buffer is None:
            return new_updates, RMSPropState(rms, None, None)
        return new_updates, RMSPropState(rms, buffer.values, buffer.absmax)

    def _check_args(self, updates, state, params) -> None:
        def matches_state(tree, what):
            _validation.check_tree_matches_state(
                tree, state.rms.nu, what=what, where="rmsprop.update", absmax=state.rms.nu_absmax
            )

        matches_state(updates, "gradient")
        if not self.decays_weights:
            return
        if params is None:
            raise ValueError(
                f"rmsprop.update: weight_decay={self.weight_decay!r} needs the "
                "parameters: call update(grads, opt_state, params). (Under "
                "optax.inject_hyperparams, weight_decay is an array even "
                "when 0: pass static_args=('weight_decay',) to keep it a "
                "Python number.)"
            )
        matches_state(params, "params")

    def _gradient(self, updates, state, params):
        """The gradient in: cast to the compute dtype, maximize, L2 weight decay."""
        g = _dtypes.to_compute_dtype(updates, state.rms.nu)
        if self.maximize:
            g = jax.tree.map(lambda x: -x, g)
        if self.decays_weights and not self.decoupled_weight_decay:
            g = _weight_decay.add_l2_to_gradient(
                g, params, self.weight_decay, self.weight_decay_mask
            )
        return g

    def _with_momentum(self, scaled, g, read, old, lr, state, like):
        """The step by the momentum buffer, and the new buffer (a ``_storage.Buffer``).

        Where the buffer is stored as codes, each of the passes that write them
        scales ``g`` again from the moments read (``read``, ``old``), for a
        division and a square root per pass rather than a float32 copy of
        ``g / denom``; so does the pass that writes rounded floats before
        jaxlib 0.9.1 (:meth:`~optax_rmsprop._xla_hints.Hints.per_rounded_pass`).
        """
        core, hints = self.core, self.core.hints
        buffer = _storage.Buffer.of(
            state.momentum, state.momentum_absmax, g, like, core.precision, real=False
        )
        settings = _momentum.Momentum(lr, self.momentum, self.nesterov, self.lr_in_momentum)
        rescaled = None
        if buffer.quantized():
            rescaled = hints.per_pass(lambda copy: core.rescale(copy, old), g)
        elif not buffer.stored_as_computed():
            count = state.rms.count
            rescaled = hints.per_rounded_pass(
                lambda copy: core.rescale_stored(copy, read, old, count), g
            )
        return settings.apply(scaled, buffer, hints, rescaled)
