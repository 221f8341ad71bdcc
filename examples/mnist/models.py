"""The two models: the classic two-convolution MNIST CNN and a small dense MLP."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from examples.mnist.config import Config


class CNN(nnx.Module):
    """conv32-conv64-dense256-dense10, 2x2 average pooling, ReLU: Flax's Linen MNIST CNN.

    ``dtype`` is the parameters' and the computation's (float32, or bfloat16).
    """

    def __init__(self, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        kw = {"param_dtype": dtype, "dtype": dtype, "rngs": rngs}
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), **kw)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), **kw)
        self.linear1 = nnx.Linear(7 * 7 * 64, 256, **kw)
        self.linear2 = nnx.Linear(256, 10, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.avg_pool(nnx.relu(self.conv1(x)), window_shape=(2, 2), strides=(2, 2))
        x = nnx.avg_pool(nnx.relu(self.conv2(x)), window_shape=(2, 2), strides=(2, 2))
        return self.linear2(nnx.relu(self.linear1(x.reshape(x.shape[0], -1))))


class MLP(nnx.Sequential):
    """784 - 10 - 10 - 10 by default, ReLU between: ``layers/0``, ``layers/2``, ... are dense."""

    def __init__(
        self, hidden: Sequence[int] = (10, 10), *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs
    ):
        widths = [28 * 28, *hidden, 10]
        kw = {"param_dtype": dtype, "dtype": dtype, "rngs": rngs}
        dense = [nnx.Linear(a, b, **kw) for a, b in itertools.pairwise(widths)]
        super().__init__(*[f for layer in dense for f in (layer, nnx.relu)][:-1])

    def __call__(self, x: jax.Array) -> jax.Array:
        return super().__call__(x.reshape(x.shape[0], -1))


def create(config: Config) -> nnx.Module:
    """The model ``config.model`` ('cnn' or 'mlp'), initialised from ``config.seed``, its
    parameters and computation in ``config.param_dtype``."""
    rngs = nnx.Rngs(params=config.seed)
    dtype = jnp.dtype(config.param_dtype)
    if config.model == "cnn":
        return CNN(dtype=dtype, rngs=rngs)
    return MLP(config.mlp_widths, dtype=dtype, rngs=rngs)
