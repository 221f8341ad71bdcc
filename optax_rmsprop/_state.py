"""The optimizer states, and the mark of the maps that a quantized state's codes index.

Below both transformations and the offline readers (``dequantize_state``, the
diagnostics): they all read these classes, and only this module says what a
saved state must hold to be read.

Every state leaf is a plain array at its parameter's position (the values, or
the codes and their per-block absmax in two parallel trees): that is what
``nnx.Optimizer``, ``optax.tree.map_params`` and checkpointers expect.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from optax_rmsprop._tree import Tree

MAPS = 2  # the version of the 8-bit and 4-bit maps, kept in a quantized state's ``maps`` field


class ScaleByRmsState(NamedTuple):
    """State of :func:`~optax_rmsprop.scale_by_rms`.

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


class RMSPropState(NamedTuple):
    """State of :func:`~optax_rmsprop.rmsprop`.

    Attributes:
      rms: the :class:`ScaleByRmsState` (``nu``, centered ``mu``, and the step
        count when a schedule or bias correction needs it).
      momentum: the momentum buffer, one array per parameter, when
        ``momentum`` is set (and not the Python number 0), else ``None``.
      momentum_absmax: with ``state_dtype="int8"`` or ``"int4"`` and momentum,
        the per-block absmax of the quantized buffer (whose leaves are then
        ``int8`` codes, or ``uint8`` bytes of two 4-bit codes), a scalar 0 at
        leaves kept unquantized; else None.
    """

    rms: ScaleByRmsState
    momentum: Tree | None
    momentum_absmax: Tree | None = None


def maps_mark() -> jax.Array:
    """What a quantized state stores in its ``maps`` field: :data:`MAPS`, int32."""
    return jnp.asarray(MAPS, jnp.int32)


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
