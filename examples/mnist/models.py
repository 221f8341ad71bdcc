"""The two models: the classic two-convolution MNIST CNN and a small dense MLP."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# A list of submodules: nnx.List from flax 0.12; flax 0.11 takes a plain list.
ModuleList = getattr(nnx, "List", list)


class CNN(nnx.Module):
    """conv32 - conv64 - dense256 - dense10, 2x2 average pooling, ReLU.

    The classic two-convolution MNIST network, as in Flax's Linen MNIST example
    of 2020-2024 (``examples/mnist/train.py``); Flax's current NNX tutorial
    adds BatchNorm and Dropout, which this model leaves out.
    """

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.linear1 = nnx.Linear(7 * 7 * 64, 256, rngs=rngs)
        self.linear2 = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        pool = lambda y: nnx.avg_pool(y, window_shape=(2, 2), strides=(2, 2))
        x = pool(nnx.relu(self.conv1(x)))
        x = pool(nnx.relu(self.conv2(x)))
        x = x.reshape(x.shape[0], -1)
        return self.linear2(nnx.relu(self.linear1(x)))


class MLP(nnx.Module):
    """A small dense network: 784 - 10 - 10 - 10 by default, ReLU between layers."""

    def __init__(self, hidden: Sequence[int] = (10, 10), *, rngs: nnx.Rngs):
        widths = [28 * 28, *hidden, 10]
        self.layers = ModuleList(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)


def create(name: str, hidden: Sequence[int], seed: int) -> nnx.Module:
    """The model called ``name`` ('cnn' or 'mlp'), initialised from ``seed``."""
    rngs = nnx.Rngs(params=seed)
    if name == "cnn":
        return CNN(rngs=rngs)
    if name == "mlp":
        return MLP(hidden, rngs=rngs)
    raise ValueError(f"unknown model {name!r}: choose 'cnn' or 'mlp'")


def count_params(model: nnx.Module) -> int:
    return sum(jnp.size(p) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
