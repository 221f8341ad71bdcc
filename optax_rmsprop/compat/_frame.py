"""The one frame every framework port runs in.

A port says what is particular to its framework: where its state keeps the
count and each slot (:class:`Layout`), what the mean square starts at, which
slots exist, the hyperparameters of a step (``hyper_at``) and the per-parameter
step (``kernel``). The frame does the rest, the same way for every port: it
checks the trees, decides per parameter whether weight decay applies (a mask
or excluded names), calls the kernel once per parameter with a typed
:class:`Leaf`, and rebuilds the state. A new convention (a callable
hyperparameter, a weight-decay mask, a masked update) is added here once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import optax

from optax_rmsprop import _tree, _validation
from optax_rmsprop._tree import Tree

H = TypeVar("H")  # a port's hyperparameters for one step
Mask = Tree | Callable[[Tree], Tree] | None


class Slots(NamedTuple):
    """One parameter's optimizer slots, under the frame's names.

    Attributes:
      square: the mean square (torch ``square_avg``, Keras ``velocity``, TF ``rms``).
      grad_avg: the mean gradient (centered), else None.
      momentum: the momentum buffer, else None.
    """

    square: jax.Array
    grad_avg: jax.Array | None
    momentum: jax.Array | None


class Leaf(NamedTuple):
    """What a kernel gets for one parameter.

    Attributes:
      grad: the gradient.
      param: the parameter, or None when ``update`` was called without params.
      slots: the parameter's slots before the step.
      decay: whether weight decay applies to this parameter (its mask entry,
        and no excluded name in its path).
    """

    grad: jax.Array
    param: jax.Array | None
    slots: Slots
    decay: bool


Kernel = Callable[[Leaf, H], tuple[jax.Array, Slots]]  # (update, slots after the step)


class Layout(NamedTuple):
    """Where a port's public state (a NamedTuple) keeps the count and each slot tree.

    Attributes:
      state: the state's class.
      count: the field of the step count.
      square: the field of the mean-square tree (:attr:`Slots.square`).
      grad_avg: the field of the mean-gradient tree.
      momentum: the field of the momentum-buffer tree.
    """

    state: type
    count: str
    square: str
    grad_avg: str
    momentum: str

    def build(self, count: jax.Array, square: Tree, grad_avg: Tree, momentum: Tree) -> Any:
        fields = (self.count, self.square, self.grad_avg, self.momentum)
        return self.state(**dict(zip(fields, (count, square, grad_avg, momentum), strict=True)))

    def read(self, state: Any) -> tuple[jax.Array, Tree, Tree | None, Tree | None]:
        count, square, grad_avg, momentum = (
            getattr(state, f) for f in (self.count, self.square, self.grad_avg, self.momentum)
        )
        return count, square, grad_avg, momentum


@dataclasses.dataclass(frozen=True)
class Port(Generic[H]):
    """One framework's conventions, for :func:`transformation`.

    Attributes:
      name: the port, for error messages (``"compat.keras"``).
      layout: the state's fields.
      kernel: the per-parameter step.
      hyper_at: this step's hyperparameters from the 0-based step count.
      square_init: the mean square's initial value (0, or 1 for TF1 and timm).
      centered: whether the state has a mean gradient.
      momentum_slot: whether the state has a momentum buffer.
      needs_params: why ``update`` needs the params (e.g. ``"weight_decay=0.1"``),
        or None when it does not.
      decay_mask: which parameters weight decay applies to: a tree of bools (or
        a prefix of one), or a function of the params returning one; None: all.
      decay_excluded: regular expressions; a parameter whose path (its keys
        joined by ``/``) contains a match gets no weight decay.
    """

    name: str
    layout: Layout
    kernel: Kernel[H]
    hyper_at: Callable[[jax.Array], H]
    square_init: float
    centered: bool
    momentum_slot: bool
    needs_params: str | None = None
    decay_mask: Mask = None
    decay_excluded: Sequence[str] = ()


def transformation(port: Port) -> optax.GradientTransformationExtraArgs:
    """The ``optax`` transformation of ``port``: its init, and the one update frame."""

    def init_fn(params: Tree) -> Any:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return port.layout.build(
            count=jnp.zeros([], jnp.int32),
            square=jax.tree.map(lambda p: jnp.full_like(p, port.square_init), params),
            grad_avg=zeros if port.centered else None,
            momentum=zeros if port.momentum_slot else None,
        )

    def update_fn(updates: Tree, state: Any, params: Tree | None = None, **extra_args):
        del extra_args
        where = f"{port.name} update"
        count, square, grad_avg, momentum = port.layout.read(state)
        _validation.check_tree_matches_state(updates, square, what="gradient", where=where)
        if port.needs_params is not None and params is None:
            raise ValueError(
                f"{where}: {port.needs_params} needs the parameters: call "
                f"update(grads, state, params)."
            )
        grads, treedef = jax.tree.flatten(updates)

        def leaves_of(tree: Tree | None) -> list:
            return [None] * len(grads) if tree is None else treedef.flatten_up_to(tree)

        slots = zip(leaves_of(square), leaves_of(grad_avg), leaves_of(momentum), strict=True)
        flags = decay_flags(port, updates, params)
        leaves = [
            Leaf(g, p, Slots(*s), d)
            for g, p, s, d in zip(grads, leaves_of(params), slots, flags, strict=True)
        ]
        hyper = port.hyper_at(count)
        steps = [port.kernel(leaf, hyper) for leaf in leaves]
        slots = [s for _, s in steps]

        def tree(field: str) -> Tree:
            return treedef.unflatten([getattr(s, field) for s in slots])

        new_state = port.layout.build(
            count=optax.safe_int32_increment(count),
            square=tree("square"),
            grad_avg=tree("grad_avg") if port.centered else None,
            momentum=tree("momentum") if port.momentum_slot else None,
        )
        return treedef.unflatten([u for u, _ in steps]), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def decay_flags(port: Port, updates: Tree, params: Tree | None) -> list[bool]:
    """Per leaf (``jax.tree.leaves`` order): does weight decay apply to it?"""
    if port.decay_mask is None and not port.decay_excluded:
        return [True] * len(jax.tree.leaves(updates))
    like = updates if params is None else params
    if callable(port.decay_mask) and params is None:
        raise ValueError(
            f"{port.name} update: a callable weight_decay_mask needs the parameters: call "
            f"update(grads, state, params)."
        )
    mask = _tree.resolve_mask(port.decay_mask, like)
    # broadcast a prefix mask (a bool for a whole subtree) to every leaf
    full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask, like)
    flags = jax.tree.structure(updates).flatten_up_to(full)
    if not port.decay_excluded:
        return flags
    pattern = re.compile("|".join(port.decay_excluded))
    paths = [path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(updates)[0]]
    return [f and pattern.search(name) is None for f, name in zip(flags, paths, strict=True)]


def path_name(path: tuple) -> str:
    """A leaf's path as its keys joined by ``/`` (``"params/Dense_0/kernel"``)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)
