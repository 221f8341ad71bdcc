"""Resuming a PyTorch RMSprop run in JAX and back, and the ports' bad-input errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_rmsprop import compat
from tests.golden import frameworks
from tests.helpers import update_and_apply

torch = pytest.importorskip("torch")

SETTINGS = dict(lr=0.01, alpha=0.9, momentum=0.9, centered=True, weight_decay=0.01)


def _torch_run(params, steps, start=0, state_dict=None):
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = torch.optim.RMSprop(list(tensors.values()), **SETTINGS)
    if state_dict is not None:
        opt.load_state_dict(state_dict)
    for t in range(start, start + steps):
        grads = frameworks.gradient({k: v.detach().numpy() for k, v in tensors.items()}, t)
        for k, g in grads.items():
            tensors[k].grad = torch.tensor(g)
        opt.step()
    return {k: v.detach().numpy().copy() for k, v in tensors.items()}, opt


def _jax_run(params, state, steps, start):
    tx = compat.pytorch(**SETTINGS)
    params = jax.tree.map(jnp.asarray, params)
    for t in range(start, start + steps):
        grads = frameworks.gradient(jax.tree.map(np.asarray, params), t)
        params, state = update_and_apply(tx)(params, state, jax.tree.map(jnp.asarray, grads))
    return jax.tree.map(np.asarray, params), state


def _sorted_params(p):  # jax.tree.leaves order of a dict is sorted keys; torch follows it
    return dict(sorted(p.items()))


def test_resume_a_torch_run_in_jax():
    init = _sorted_params(frameworks.initial_params("float64", complex_leaf=True))
    torch_100, _ = _torch_run(init, 100)
    torch_50, opt = _torch_run(init, 50)
    state = compat.from_pytorch_state(opt.state_dict(), torch_50)
    assert int(state.step) == 50
    jax_100, _ = _jax_run(torch_50, state, 50, start=50)
    for k in init:
        np.testing.assert_allclose(jax_100[k], torch_100[k], rtol=1e-12, atol=1e-14)


def test_resume_a_jax_run_in_torch():
    init = _sorted_params(frameworks.initial_params("float64"))
    torch_100, _ = _torch_run(init, 100)
    tx = compat.pytorch(**SETTINGS)
    jax_50, state = _jax_run(init, tx.init(jax.tree.map(jnp.asarray, init)), 50, start=0)
    state_dict = compat.to_pytorch_state(state, jax_50, SETTINGS)
    torch_resumed, _ = _torch_run(jax_50, 50, start=50, state_dict=state_dict)
    for k in init:
        np.testing.assert_allclose(torch_resumed[k], torch_100[k], rtol=1e-12, atol=1e-14)


def _arrays(state) -> list[np.ndarray]:
    return [np.array(x, copy=True) for x in jax.tree.leaves(state)]


def test_from_pytorch_state_copies_torch_memory():
    # torch steps in place: a JAX state that shares its buffers would change under
    # the user. Convert, step torch again, and the JAX state must be as converted.
    init = _sorted_params(frameworks.initial_params("float64", complex_leaf=True))
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    opt = torch.optim.RMSprop(list(tensors.values()), **SETTINGS)
    for t in range(3):
        grads = frameworks.gradient({k: v.detach().numpy() for k, v in tensors.items()}, t)
        for k, g in grads.items():
            tensors[k].grad = torch.tensor(g)
        opt.step()
        if t == 0:
            state = compat.from_pytorch_state(opt.state_dict(), init)
            converted = _arrays(state)
    for before, after in zip(converted, _arrays(state), strict=True):
        np.testing.assert_array_equal(after, before)
    torch_now = opt.state[tensors["b"]]["square_avg"].numpy()
    assert not np.allclose(torch_now, state.square_avg["b"])  # torch did move on


def test_to_pytorch_state_copies_jax_memory():
    # The other way round: load the converted state into torch, step torch, and
    # the JAX state it came from is unchanged.
    init = _sorted_params(frameworks.initial_params("float64"))
    tx = compat.pytorch(**SETTINGS)
    jax_params, state = _jax_run(init, tx.init(jax.tree.map(jnp.asarray, init)), 2, start=0)
    before = _arrays(state)
    _torch_run(jax_params, 3, start=2, state_dict=compat.to_pytorch_state(state, jax_params))
    for was, now in zip(before, _arrays(state), strict=True):
        np.testing.assert_array_equal(now, was)


def test_mismatched_state_dict_is_refused():
    init = _sorted_params(frameworks.initial_params("float64"))
    _, opt = _torch_run(init, 2)
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="has 2 parameters but params has 3 leaves"):
        compat.from_pytorch_state(sd, dict(init, extra=np.zeros(1)))
    transposed = {"b": init["b"], "w": init["w"].T}
    with pytest.raises(
        ValueError,
        match=r"square_avg of torch parameter 1 has shape \(3, 2\) but "
        r"leaf 1 of params has shape \(2, 3\)",
    ):
        compat.from_pytorch_state(sd, transposed)
    fresh = torch.optim.RMSprop([torch.zeros(2, requires_grad=True)]).state_dict()
    with pytest.raises(ValueError, match="have no state yet"):
        compat.from_pytorch_state(fresh, {"b": np.zeros(2)})


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: compat.pytorch(lr=-1.0), r"lr must be a finite number in \[0, inf\)"),
        (lambda: compat.pytorch(alpha=1.5), r"alpha must be a finite number in \[0, 1\]"),
        (lambda: compat.pytorch(momentum=1.0), r"momentum .*\[0, 1\)"),
        (lambda: compat.keras(rho=-0.1), r"rho must be"),
        (lambda: compat.keras(weight_decay=-1.0), r"weight_decay must be"),
        (lambda: compat.keras_legacy(decay=-0.5), r"decay must be a finite number in \[0, inf\)"),
        (lambda: compat.tensorflow_v1(0.1, epsilon=-1e-10), r"epsilon must be"),
        (lambda: compat.timm(eps=float("nan")), r"eps .*got nan"),
        (lambda: compat.timm(caution="yes"), r"caution must be True or False"),
        (lambda: compat.pytorch(alpha=lambda count: 0.9), r"alpha must be a number: the fr"),
        (lambda: compat.keras(rho=lambda count: 0.9), r"rho must be a number: the fr"),
        (lambda: compat.keras(exclude_from_weight_decay="bias"), r"list of strings .*\['bias'\]"),
        (lambda: compat.keras(exclude_from_weight_decay=["("]), r"'\(' is not a regular"),
        # tf.keras 2 fails on a callable epsilon (first step) or decay (construction)
        (lambda: compat.keras_legacy(epsilon=lambda count: 1e-3), r"epsilon must be a number"),
        (lambda: compat.keras_legacy(decay=lambda count: 0.1), r"decay must be a number"),
        (lambda: compat.keras_legacy(momentum=lambda: 0.9), r"momentum: a callable .* step count"),
        (lambda: compat.keras_legacy(centered=lambda: True), r"centered must be True or False"),
        (lambda: compat.tensorflow_v1(lambda: 0.1), r"learning_rate: a callable"),
    ],
)
def test_bad_hyperparameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_weight_decay_needs_params():
    tx = compat.pytorch(weight_decay=0.1)
    g = jnp.ones(2)
    with pytest.raises(ValueError, match="weight_decay=0.1 needs the parameters"):
        tx.update(g, tx.init(g))
