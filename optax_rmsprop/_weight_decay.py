"""Weight decay, coupled (L2 added to the gradient) or decoupled (AdamW style)."""

from __future__ import annotations

from collections.abc import Callable

from jax.typing import ArrayLike

from optax_rmsprop import _dtypes, _tree
from optax_rmsprop._tree import Tree

Mask = Tree | Callable[[Tree], Tree] | None


def add_l2_to_gradient(grads: Tree, params: Tree, weight_decay: ArrayLike, mask: Mask) -> Tree:
    """Coupled weight decay: ``g + wd * p`` where the mask is True."""
    return _tree.map_masked(
        lambda g, p: g + weight_decay * _dtypes.cast(p, g.dtype),
        _tree.resolve_mask(mask, params),
        grads,
        params,
    )


def add_decoupled_decay(
    step: Tree, params: Tree, learning_rate: ArrayLike, weight_decay: ArrayLike, mask: Mask
) -> Tree:
    """Decoupled weight decay: ``step + lr * wd * p`` where the mask is True."""
    return _tree.map_masked(
        lambda s, p: s + learning_rate * weight_decay * _dtypes.cast(p, s.dtype),
        _tree.resolve_mask(mask, params),
        step,
        params,
    )
