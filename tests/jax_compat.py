"""The jax and optax APIs that the tests call and that moved within the supported range.

The range is CI's: ``.ci/minimum.txt`` (jax 0.7.2, optax 0.2.4) to the newest
releases. The library's own reads of the installed jax are in
``optax_rmsprop/_jax_versions.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import optax


@contextlib.contextmanager
def enable_x64(enabled: bool = True) -> Iterator[None]:
    """float64 inside the block: ``jax.enable_x64`` (jax >= 0.8) or its experimental form."""
    if hasattr(jax, "enable_x64"):
        with jax.enable_x64(enabled):
            yield
    else:
        from jax.experimental import disable_x64
        from jax.experimental import enable_x64 as experimental_enable_x64

        with experimental_enable_x64() if enabled else disable_x64():
            yield


def map_params(tx: optax.GradientTransformation, fn: Callable, state: Any) -> Any:
    """``optax.tree.map_params`` (optax >= 0.2.5), else ``optax.tree_map_params``."""
    tree = getattr(optax, "tree", None)
    if tree is not None and hasattr(tree, "map_params"):
        return tree.map_params(tx, fn, state)
    return optax.tree_map_params(tx, fn, state)
