"""Cautious steps: drop the components of a step that move against the gradient.

The mask keeps a component where the step and the gradient agree in sign and
is rescaled by the kept fraction of the whole tensor, so the mean step size is
kept (Liang et al., 2024; timm's ``_apply_caution``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MIN_FRACTION = 1e-3  # the kept fraction is clamped from below before dividing by it (timm)


def cautious(step: jax.Array, grad: jax.Array) -> jax.Array:
    """``step * mask / max(mean(mask), 1e-3)`` with ``mask = (step * grad > 0)``.

    For complex tensors the agreement is ``Re(conj(step) * grad) > 0``: the
    step has a positive component along the gradient. Computed in the
    gradient's dtype, in timm's order of operations.

    References:
      Liang, Chen, Liu and Liu, `Cautious Optimizers: Improving Training with
      One Line of Code <https://arxiv.org/abs/2411.16085>`_, 2024.
    """
    agreement = (step.conj() * grad).real if jnp.iscomplexobj(step) else step * grad
    mask = (agreement > 0).astype(grad.dtype)
    fraction = jnp.maximum(jnp.mean(mask), jnp.asarray(MIN_FRACTION, mask.dtype))
    return step * (mask / fraction)
