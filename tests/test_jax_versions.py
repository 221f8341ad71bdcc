"""What the library reads of the installed jax: release numbers, and explicit sharding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from optax_rmsprop import _jax_versions


@pytest.mark.parametrize(
    "version,expected",
    [
        ("0.7.2", (0, 7, 2)),
        ("0.10.0rc1", (0, 10, 0)),
        ("0.9", (0, 9, 0)),
        ("1.2.3.dev4", (1, 2, 3)),
    ],
)
def test_release_reads_the_first_three_numbers(version, expected):
    assert _jax_versions.release(version) == expected


def test_release_orders_versions_numerically():
    assert _jax_versions.release("0.10.0") > _jax_versions.release("0.9.2")


def test_shard_like_leaves_an_array_without_explicit_sharding_unchanged():
    x, like = jnp.zeros((4, 2)), jnp.ones((4, 2))
    assert jax.typeof(like).sharding.mesh.empty
    assert _jax_versions.shard_like(x, like) is x
