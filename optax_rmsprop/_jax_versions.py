"""The JAX and optax APIs that moved between the versions this library supports.

One place for every feature test, so the rest of the code (and the tests)
calls one name whatever the installed version. The supported range is the one
CI tests: ``.ci/minimum.txt`` (oldest) to the newest releases, with Colab's
TPU runtime (``.ci/colab-tpu.txt``) in between.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import optax


def release(version: str) -> tuple[int, int, int]:
    """``(major, minor, micro)`` of a version string such as ``"0.9.2"`` or ``"0.10.0rc1"``."""
    parts = [int("".join(c for c in part if c.isdigit()) or 0) for part in version.split(".")[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


# jax.typeof: public from jax 0.6; older versions have only the abstract value.
typeof: Callable[[Any], Any] = getattr(jax, "typeof", None) or jax.core.get_aval

# Sharding in types (explicit mesh axes, jax.set_mesh) arrived in jax 0.6/0.7.
HAS_EXPLICIT_SHARDING = hasattr(jax, "set_mesh") and hasattr(jax.sharding, "AxisType")


def _explicit_sharding(x: jax.Array) -> Any:
    """``x``'s sharding if it is explicit (sharding in types), else None."""
    if not HAS_EXPLICIT_SHARDING:
        return None
    sharding = typeof(x).sharding
    axis_types = getattr(getattr(sharding, "mesh", None), "axis_types", ())
    return sharding if jax.sharding.AxisType.Explicit in axis_types else None


def shard_like(x: jax.Array, like: jax.Array) -> jax.Array:
    """``x`` with ``like``'s explicit sharding spec (same rank); unchanged elsewhere."""
    sharding = _explicit_sharding(like)
    if sharding is None:
        return x
    return jax.sharding.reshard(x, sharding.spec)


def make_mesh(shape: tuple[int, ...], names: tuple[str, ...], *, explicit: bool = False):
    """``jax.make_mesh`` with Auto (or Explicit) axes where jax has axis types."""
    if not hasattr(jax.sharding, "AxisType"):
        if explicit:
            raise NotImplementedError("explicit sharding needs a newer jax")
        return jax.make_mesh(shape, names)
    kind = jax.sharding.AxisType.Explicit if explicit else jax.sharding.AxisType.Auto
    return jax.make_mesh(shape, names, axis_types=(kind,) * len(shape))


def set_mesh(mesh: jax.sharding.Mesh) -> contextlib.AbstractContextManager:
    """``jax.set_mesh(mesh)``, or the mesh as a context manager before it existed."""
    if hasattr(jax, "set_mesh"):
        return jax.set_mesh(mesh)
    return mesh


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
