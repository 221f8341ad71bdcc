"""What the library reads of the installed jax: its release, and explicit sharding.

The supported range is the one CI tests: ``.ci/minimum.txt`` (jax 0.7.2, as
Colab's TPU runtime ships) to the newest releases. The tests' own version shims
are in ``tests/jax_compat.py``.
"""

from __future__ import annotations

import re
from typing import Any

import jax


def release(version: str) -> tuple[int, int, int]:
    """``(major, minor, micro)`` of a version string such as ``"0.9.2"`` or ``"0.10.0rc1"``."""
    parts = [int(re.match(r"\d*", part).group() or 0) for part in version.split(".")[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def _explicit_sharding(x: jax.Array) -> Any:
    """``x``'s sharding if it is explicit (sharding in types), else None."""
    sharding = jax.typeof(x).sharding
    axis_types = getattr(getattr(sharding, "mesh", None), "axis_types", ())
    return sharding if jax.sharding.AxisType.Explicit in axis_types else None


def shard_like(x: jax.Array, like: jax.Array) -> jax.Array:
    """``x`` with ``like``'s explicit sharding spec (same rank); unchanged elsewhere."""
    sharding = _explicit_sharding(like)
    if sharding is None:
        return x
    return jax.sharding.reshard(x, sharding.spec)
