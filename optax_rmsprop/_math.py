"""The RMS step's mathematics, array by array: the moments, the denominator, the correction.

Pure functions of JAX arrays, with no storage, no state and no XLA hints: the
layers above (:mod:`optax_rmsprop._scale_by_rms`, the diagnostics) call them
on values already read from the state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|**2``, real for complex ``x`` (``(conj(x) * x).real``, as optax)."""
    if jnp.iscomplexobj(x):
        return (x.conj() * x).real
    return x * x


def denominator(
    nu: jax.Array,
    mu: jax.Array | None,
    correction: jax.Array | None,
    eps: ArrayLike,
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


def update_nu(g: jax.Array, nu: jax.Array, decay: ArrayLike) -> jax.Array:
    r"""The running mean square after one more gradient: :math:`\rho\,\nu + (1-\rho)\,|g|^2`.

    Args:
      g: the gradient (real or complex), in its compute dtype.
      nu: the running mean of ``|g|**2``, real, in ``g``'s real dtype.
      decay: :math:`\rho`.

    Returns:
      :math:`\nu'`, in ``nu``'s dtype.
    """
    return decay * nu + (1 - decay) * abs_sq(g)


def update_mu(g: jax.Array, mu: jax.Array, decay: ArrayLike) -> jax.Array:
    r"""The running mean (centered) after one more gradient: :math:`\rho\,m + (1-\rho)\,g`.

    Args:
      g: the gradient (real or complex), in its compute dtype.
      mu: the running mean of ``g``, in ``g``'s dtype.
      decay: :math:`\rho`.

    Returns:
      :math:`m'`, in ``g``'s dtype.
    """
    return decay * mu + (1 - decay) * g


def rms_scale(
    g: jax.Array,
    nu: jax.Array,
    mu: jax.Array | None,
    *,
    eps: ArrayLike,
    eps_in_sqrt: bool,
    correction: jax.Array | None,
) -> jax.Array:
    r"""``g`` divided by the root of its moments (already updated with ``g``).

    .. math::

      v = c\,\nu' \;\text{ or, centered, }\; \max(c\,\nu' - |c\,m'|^2,\ 0), \qquad
      u = g / (\sqrt{v} + \epsilon) \;\text{ or }\; g / \sqrt{v + \epsilon}
      \;\text{(eps\_in\_sqrt)}

    with :math:`c` the bias-correction factor :math:`1/(1-\rho^{t+1})`, or 1.
    :meth:`RmsCore.write` gives the new moments as computed, rounded to a
    bfloat16 or float16 state's dtype (not to 8-bit or 4-bit codes).

    Args:
      g: the gradient (real or complex).
      nu: :math:`\nu'`, real, in ``g``'s real dtype.
      mu: :math:`m'` (centered), or None.
      eps: :math:`\epsilon`.
      eps_in_sqrt: where :math:`\epsilon` goes.
      correction: :math:`c`, or None for no bias correction.

    Returns:
      ``u``, in ``g``'s dtype.
    """
    return g / denominator(nu, mu, correction, eps, eps_in_sqrt)


def bias_correction_factor(count: jax.Array, decay: ArrayLike) -> jax.Array:
    """``1 / (1 - decay**(count + 1))``: the factor of the moments after ``count + 1`` updates."""
    t = (count + 1).astype(jnp.result_type(float))
    return 1 / (1 - decay**t)
