"""Every option against the float64 NumPy transcription in tests/reference.py."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop
from tests.reference import Config, RMSPropReference

STEPS = 120


def schedule(t):
    return 0.05 * 0.97**t + 0.002


CASES = {
    "plain": Config(),
    "eps_in_sqrt": Config(eps_in_sqrt=True, eps=1e-3),
    "initial_scale": Config(initial_scale=1.0, decay=0.95),
    "large_eps": Config(eps=0.1),
    "centered": Config(centered=True),
    "centered_eps_in_sqrt": Config(centered=True, eps_in_sqrt=True, eps=1e-2),
    "momentum": Config(momentum=0.9),
    "momentum_lr_outside": Config(momentum=0.9, lr_in_momentum=False),
    "nesterov": Config(momentum=0.8, nesterov=True),
    "nesterov_lr_outside": Config(momentum=0.8, nesterov=True, lr_in_momentum=False),
    "bias_correction": Config(bias_correction=True, decay=0.99),
    # At t=0 centered + bias correction has var = g**2 - g**2 = 0 exactly; rounding
    # noise then dominates unless eps sits inside the root (docs/porting.md, on eps placement).
    "bias_correction_centered": Config(
        bias_correction=True, centered=True, eps=1e-2, eps_in_sqrt=True
    ),
    "coupled_wd": Config(weight_decay=0.1),
    "decoupled_wd": Config(weight_decay=0.1, decoupled_weight_decay=True),
    "maximize": Config(maximize=True),
    "schedule": Config(learning_rate=schedule),
    "schedule_momentum": Config(learning_rate=schedule, momentum=0.9),
    "schedule_momentum_lr_outside": Config(
        learning_rate=schedule, momentum=0.9, lr_in_momentum=False
    ),
    "everything": Config(
        learning_rate=schedule,
        decay=0.95,
        eps=1e-4,
        initial_scale=0.5,
        eps_in_sqrt=True,
        centered=True,
        momentum=0.7,
        nesterov=True,
        lr_in_momentum=False,
        bias_correction=True,
        weight_decay=0.05,
        decoupled_weight_decay=True,
    ),
    "everything_coupled": Config(
        learning_rate=schedule,
        centered=True,
        momentum=0.5,
        weight_decay=0.05,
        maximize=True,
        initial_scale=0.1,
    ),
}


def make_tx(cfg: Config, mask=None):
    kwargs = dataclasses.asdict(cfg)
    kwargs.pop("weight_decay_mask")
    return optax_rmsprop.rmsprop(**kwargs, weight_decay_mask=mask)


def noisy_gradients(dtype, shape=(7,), steps=STEPS, seed=0, maximize=False):
    """Gradient of a quadratic bowl plus noise, as a function of params.

    With ``maximize`` the gradient is negated, so that an optimizer that
    ascends (``maximize=True``) still descends the bowl and converges.
    """
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.1, 3.0, size=shape)
    noise = rng.normal(size=(steps, *shape))
    if np.issubdtype(dtype, np.complexfloating):
        noise = noise + 1j * rng.normal(size=(steps, *shape))
    target = rng.normal(size=shape)

    def grad(p, t):
        g = scale * (p - target) + 0.3 * noise[t]
        return (-g if maximize else g).astype(dtype)

    return grad


def run_both(cfg: Config, dtype, mask_b: bool = True):
    """Trajectories of the library and the reference on {'a', 'b'} params."""
    rng = np.random.default_rng(1)
    init = {
        "a": rng.normal(size=(7,)).astype(dtype),
        "b": rng.normal(size=(7,)).astype(dtype),
    }
    if np.issubdtype(dtype, np.complexfloating):
        init = {k: (v + 1j * rng.normal(size=v.shape)).astype(dtype) for k, v in init.items()}
    grad_fn = noisy_gradients(dtype, maximize=cfg.maximize)
    mask = {"a": True, "b": mask_b}
    tx = make_tx(cfg, mask=mask)
    params = jax.tree.map(jnp.asarray, init)
    state = tx.init(params)
    update = jax.jit(tx.update)
    refs = {
        k: RMSPropReference(
            dataclasses.replace(cfg, weight_decay_mask=mask[k]),
            init[k].astype(np.complex128 if np.iscomplexobj(init[k]) else np.float64),
        )
        for k in init
    }
    traj, ref_traj = [], []
    for t in range(STEPS):
        grads = {k: jnp.asarray(grad_fn(np.asarray(params[k]), t)) for k in params}
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        ref = {k: refs[k].step(np.asarray(grads[k], refs[k].params.dtype)) for k in refs}
        traj.append(params)
        ref_traj.append(ref)
    return traj, ref_traj, state


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_matches_reference(name):
    traj, ref_traj, state = run_both(CASES[name], np.float64, mask_b=False)
    for t, (got, want) in enumerate(zip(traj, ref_traj, strict=False)):
        for k in want:
            np.testing.assert_allclose(
                np.asarray(got[k]),
                want[k],
                rtol=1e-12,
                atol=1e-13,
                err_msg=f"step {t}, leaf {k}",
            )
    chex.assert_tree_all_finite(state)


@pytest.mark.parametrize("name", ["plain", "centered", "momentum", "everything"])
def test_complex128_matches_reference(name):
    traj, ref_traj, _ = run_both(CASES[name], np.complex128)
    for got, want in zip(traj, ref_traj, strict=False):
        for k in want:
            np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", ["plain", "centered", "nesterov", "everything"])
def test_float32_tracks_reference(name):
    """float32 runs track the float64 reference to float32 accuracy."""
    traj, ref_traj, state = run_both(CASES[name], np.float32)
    assert state.rms.nu["a"].dtype == jnp.float32
    for got, want in zip(traj[:30], ref_traj[:30], strict=False):
        for k in want:
            np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=2e-4, atol=2e-4)


def test_reference_detects_a_wrong_optimizer():
    """The comparison can fail: a different decay gives a different trajectory."""
    cfg = CASES["plain"]
    traj, _, _ = run_both(cfg, np.float64)
    _, ref_traj, _ = run_both(dataclasses.replace(cfg, decay=0.91), np.float64)
    assert not np.allclose(np.asarray(traj[-1]["a"]), ref_traj[-1]["a"], rtol=1e-6)
