"""The momentum buffer, with the learning rate inside it or outside it.

* ``lr_in_momentum=True`` (optax, TensorFlow, Keras): ``b = mu*b + lr*s``,
  step ``b`` (Nesterov: ``lr*s + mu*b``).
* ``lr_in_momentum=False`` (PyTorch): ``b = mu*b + s``, step ``lr*b``
  (Nesterov: ``lr*(s + mu*b)``).

Both are the same for a constant learning rate and differ under a schedule.
"""

from __future__ import annotations

import dataclasses

import jax
from jax.typing import ArrayLike

from optax_rmsprop import _storage, _xla_hints
from optax_rmsprop._dtypes import as_real
from optax_rmsprop._tree import Tree


@dataclasses.dataclass(frozen=True)
class Momentum:
    """The momentum settings of one step (the learning rate may be a traced value)."""

    learning_rate: ArrayLike
    momentum: ArrayLike
    nesterov: bool
    lr_in_momentum: bool

    def accumulate(self, s: jax.Array, b: jax.Array) -> jax.Array:
        """The new buffer from ``s = g / denom`` and the old buffer ``b``."""
        kept = as_real(self.momentum, s) * b
        return kept + (as_real(self.learning_rate, s) * s if self.lr_in_momentum else s)

    def step(self, s: jax.Array, b: jax.Array) -> jax.Array:
        """The parameters' step from ``s`` and the new buffer ``b``."""
        lr, mu = as_real(self.learning_rate, s), as_real(self.momentum, s)
        if self.lr_in_momentum:
            return lr * s + mu * b if self.nesterov else b
        return lr * (s + mu * b) if self.nesterov else lr * b

    def apply(
        self,
        scaled: Tree,
        buffer: _storage.Buffer,
        hints: _xla_hints.Hints,
        rescaled: list[Tree] | None = None,
    ) -> tuple[Tree, _storage.Buffer]:
        """Returns ``(step, new buffer)``; the buffer keeps its encoding.

        The step uses the new buffer as stored (8-bit codes, bfloat16: read
        back), as PyTorch's in-place update of a low-precision buffer does: the
        parameters move by the buffer the state holds. 4-bit codes, whose 8
        magnitudes would round each step by up to 0.11 of the block's absmax,
        are used as computed.

        ``rescaled``: ``scaled`` computed apart for each of the two passes that
        write quantized codes (the absmax, the codes;
        :meth:`~optax_rmsprop._xla_hints.Hints.per_pass`), so that no float32
        copy of ``scaled`` or of the new buffer is kept at the step's peak.
        """
        old = buffer.read()
        new = jax.tree.map(self.accumulate, scaled, old)
        passes = None
        if rescaled is not None:
            passes = tuple(jax.tree.map(self.accumulate, s, old) for s in rescaled)
        buffer, used = buffer.write(new, passes=passes).read_back(new, hints, codes=True)
        return jax.tree.map(self.step, scaled, used), buffer
