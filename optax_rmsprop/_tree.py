"""Small pytree helpers shared by the transforms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Tree = Any  # a pytree: the params, the gradients or one per-parameter slice of a state


def nones_like(tree: Tree) -> Tree:
    """A tree shaped like ``tree`` with None at every leaf (an absent optional buffer)."""
    return jax.tree.map(lambda _: None, tree)


def resolve_mask(mask: Tree | Callable[[Tree], Tree] | None, params: Tree) -> Tree:
    """The boolean mask tree (or prefix tree) for ``params``; all True if None."""
    if mask is None:
        return True
    return mask(params) if callable(mask) else mask


def map_masked(fn: Callable[..., Any], mask: Tree, tree: Tree, *rest: Tree) -> Tree:
    """``fn(leaf, *rest_leaves)`` where ``mask`` is True; the leaf unchanged elsewhere.

    ``mask`` is a tree of bools with the structure of ``tree`` or a prefix of
    it (a single bool masks a whole subtree), as in ``optax.masked``.
    """

    def apply(m, sub, *rest_sub):
        if not m:
            return sub
        return jax.tree.map(fn, sub, *rest_sub)

    return jax.tree.map(apply, mask, tree, *rest, is_leaf=lambda x: x is None)
