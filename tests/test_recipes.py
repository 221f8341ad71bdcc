"""The recipes: TF1-trained ones agree with the verified TF1 port, and all of them train."""

from __future__ import annotations

import inspect
import typing

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_rmsprop import compat, recipes
from tests.helpers import jitted_step, update_and_apply
from tests.reference import Config, RMSPropReference


def _trajectory(tx, steps=60, params=None):
    params = jnp.array([1.5, -0.7, 0.2]) if params is None else params
    state = tx.init(params)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        g = params * 0.5 + jnp.asarray(rng.normal(size=3) * 0.1)
        params, state = update_and_apply(tx)(params, state, g)
        out.append(params)
    return jnp.stack(out)


@pytest.mark.parametrize(
    "recipe,tf1",
    [
        (recipes.impala(0.01), compat.tensorflow_v1(0.01, decay=0.99, epsilon=0.1)),
        (
            recipes.efficientnet(0.01, weight_decay=0.0),
            compat.tensorflow_v1(0.01, decay=0.9, momentum=0.9, epsilon=1e-3),
        ),
        (
            recipes.inception(0.01, weight_decay=0.0),
            compat.tensorflow_v1(0.01, decay=0.9, momentum=0.9, epsilon=1.0),
        ),
    ],
)
def test_tf1_recipes_match_tensorflow_v1(recipe, tf1):
    # TF1 rounds its hyperparameters to float32 even for float64 variables (the
    # port reproduces that); the recipe uses them exactly: hence 1e-6, not 1e-12.
    # A wrong convention (init 0, eps outside, lr outside) differs by >1e-2.
    chex.assert_trees_all_close(_trajectory(recipe), _trajectory(tf1), rtol=1e-6, atol=1e-6)


def test_dqn_matches_its_transcription():
    got = _trajectory(recipes.dqn_nature(0.01))
    ref = RMSPropReference(
        Config(learning_rate=0.01, decay=0.95, eps=0.01, eps_in_sqrt=True, centered=True),
        np.array([1.5, -0.7, 0.2]),
    )
    rng = np.random.default_rng(0)
    for t in range(60):
        g = ref.params * 0.5 + rng.normal(size=3) * 0.1
        ref.step(g)
        np.testing.assert_allclose(got[t], ref.params, rtol=1e-12)


def test_dqn_mean_loss_rescales_eps():
    """Averaging the loss over 32 must not change the steps: eps becomes 0.01 / 32**2."""
    p = jnp.array([1.0, -2.0])
    g = jnp.array([0.3, 0.02])
    summed = recipes.dqn_nature()
    meaned = recipes.dqn_nature(loss_reduction="mean")
    u1, _ = summed.update(g, summed.init(p), p)
    u2, _ = meaned.update(g / 32, meaned.init(p), p)
    chex.assert_trees_all_close(u1, u2, rtol=1e-10)
    with pytest.raises(ValueError, match="loss_reduction must be 'sum' or 'mean'"):
        recipes.dqn_nature(loss_reduction="avg")


@pytest.mark.parametrize("name", ["graves_2013", "dqn_nature", "impala", "a3c"])
def test_recipes_train(name):
    tx = getattr(recipes, name)(1e-2)
    params = jnp.array([2.0, -3.0])
    state = tx.init(params)
    loss = lambda p: jnp.sum(p**2)

    step = jitted_step(tx)
    for _ in range(1500):
        params, state = step(params, state, jax.grad(loss)(params))
    assert loss(params) < 0.05


def test_efficientnet_masks_weight_decay():
    params = {"kernel": jnp.ones(2), "bn_scale": jnp.ones(2)}
    mask = {"kernel": True, "bn_scale": False}
    tx = recipes.efficientnet(0.01, weight_decay=0.5, weight_decay_mask=mask)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    assert float(jnp.abs(updates["kernel"]).max()) > 0
    chex.assert_trees_all_equal(updates["bn_scale"], jnp.zeros(2))


@pytest.mark.parametrize("name", recipes.__all__)
def test_each_recipe_returns_what_its_annotation_says(name):
    recipe = getattr(recipes, name)
    annotation = typing.get_type_hints(recipe)["return"]
    assert annotation is optax.GradientTransformationExtraArgs
    tx = recipe(1e-2)
    assert isinstance(tx, annotation) and tx.update.__code__.co_flags & inspect.CO_VARKEYWORDS


def test_all_lists_every_public_recipe():
    defined = {n: f for n, f in vars(recipes).items() if inspect.getmodule(f) is recipes}
    public = {n for n, f in defined.items() if inspect.isfunction(f) and n[0] != "_"}
    assert set(recipes.__all__) == public
