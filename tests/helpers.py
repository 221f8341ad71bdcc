"""Helpers shared by the library's tests: the jitted step, and runs against the reference.

``CASES`` names one reference ``Config`` per option set; ``run_both`` steps the
library and the float64 NumPy reference (``tests/reference.py``) side by side on
the same gradients. ``tests/test_reference.py`` holds them to float64 accuracy,
``tests/test_float32.py`` to float32 rounding with x64 off.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop
from tests.reference import Config, RMSPropReference


def update_and_apply(tx: optax.GradientTransformation) -> Callable:
    """``(params, state, grads) -> (params, state)``: one update of ``tx``, applied."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def jitted_step(tx: optax.GradientTransformation, *, donate: bool = False) -> Callable:
    """The step of ``tx``, jitted; with ``donate``, params and state are donated."""
    return jax.jit(update_and_apply(tx), donate_argnums=(0, 1) if donate else ())


def compile_step(tx: optax.GradientTransformation, params):
    """The donated step of ``tx`` compiled for ``params``' shapes (nothing is initialised)."""
    state = jax.eval_shape(tx.init, params)
    return jitted_step(tx, donate=True).lower(params, state, params).compile()


def bytes_accessed(compiled) -> float:
    """The bytes XLA's cost analysis counts for a compiled function."""
    analysis = compiled.cost_analysis()
    return float((analysis[0] if isinstance(analysis, list) else analysis)["bytes accessed"])


def entry_ops(compiled) -> list[str]:
    """The op of each instruction of the optimised HLO's entry computation, in order."""
    entry = compiled.as_text().split("ENTRY", 1)[1].split("\n}", 1)[0]
    return re.findall(r"^\s*(?:ROOT )?\S+ = .*? ([\w-]+)\(", entry, flags=re.M)


def kernels(ops: list[str]) -> int:
    """Entry ops that launch work (fusions, custom calls, lone ops), not plumbing."""
    plumbing = {"parameter", "tuple", "get-tuple-element", "bitcast", "constant"}
    return sum(op not in plumbing for op in ops)


STEPS = 120


def option_params(option_sets: list[dict], *fast_pairs: set[str]) -> list:
    """``option_sets`` as pytest parameters; CI runs them all, the fast tier a covering few.

    Fast (unmarked): no option, each option alone, every option, and the
    ``fast_pairs`` (sets of the options that are on); the rest is marked slow.
    """
    params = []
    for options in option_sets:
        on = {k for k, v in options.items() if v}
        fast = len(on) <= 1 or on == set(options) or on in fast_pairs
        params.append(
            pytest.param(options, id=str(options), marks=() if fast else pytest.mark.slow)
        )
    return params


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


def make_tx(cfg: Config, mask=None, **extra):
    """``optax_rmsprop.rmsprop`` with the options of ``cfg`` (and ``extra`` ones)."""
    kwargs = dataclasses.asdict(cfg)
    kwargs.pop("weight_decay_mask")
    return optax_rmsprop.rmsprop(**kwargs, weight_decay_mask=mask, **extra)


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


def reference_of(cfg: Config, params) -> RMSPropReference:
    """The reference started at ``params``, in float64 (complex128 for complex params)."""
    params = np.asarray(params)
    return RMSPropReference(cfg, params.astype(np.result_type(params, np.float64)))


class Run(NamedTuple):
    traj: list  # the library's params (with ``resync``: updates), per step and leaf
    ref_traj: list  # the reference's, likewise
    state: Any  # the library's last state
    refs: dict[str, RMSPropReference]  # the references, after the last step


def run_both(
    cfg: Config,
    dtype,
    mask_b: bool = True,
    *,
    steps: int = STEPS,
    shape: tuple[int, ...] = (7,),
    resync: bool | Callable[[Any], dict[str, Any]] = False,
    stored_buffer: Callable[[Any], Any] | None = None,
    **options,
) -> Run:
    """The library and the reference side by side on {'a', 'b'} params of ``dtype``.

    ``options`` go to ``rmsprop`` beside ``cfg``'s. With ``resync`` the
    reference restarts every step from the library's params, and the
    trajectories are of updates: each step's error alone, not the drift of
    many. The reference keeps its own float64 moments, unless ``resync`` is a
    function of the library's state that gives the reference's fields (``nu``,
    ``m``, ``buf``: trees, or None to keep its own) to restart from too.
    ``stored_buffer``, a function of the library's new state, gives the
    momentum buffer as it stores it (a tree): the reference's step then uses
    that buffer (:attr:`RMSPropReference.store`), as the library's does.
    """
    rng = np.random.default_rng(1)
    init = {
        "a": rng.normal(size=shape).astype(dtype),
        "b": rng.normal(size=shape).astype(dtype),
    }
    if np.issubdtype(dtype, np.complexfloating):
        init = {k: (v + 1j * rng.normal(size=v.shape)).astype(dtype) for k, v in init.items()}
    grad_fn = noisy_gradients(dtype, shape=shape, steps=steps, maximize=cfg.maximize)
    mask = {"a": True, "b": mask_b}
    tx = make_tx(cfg, mask=mask, **options)
    params = jax.tree.map(jnp.asarray, init)
    state = tx.init(params)
    update = jax.jit(tx.update)
    refs = {
        k: reference_of(dataclasses.replace(cfg, weight_decay_mask=mask[k]), init[k]) for k in init
    }
    traj, ref_traj = [], []
    for t in range(steps):
        grads = {k: jnp.asarray(grad_fn(np.asarray(params[k]), t)) for k in params}
        if resync:
            _restart(refs, params, resync(state) if callable(resync) else {})
        before = {k: ref.params for k, ref in refs.items()}
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        buffers = None if stored_buffer is None else stored_buffer(state)
        if buffers is not None:
            for k, ref in refs.items():
                ref.store = lambda _, b=buffers[k]: np.asarray(b)
        ref = {k: refs[k].step(np.asarray(grads[k], refs[k].params.dtype)) for k in refs}
        traj.append(updates if resync else params)
        ref_traj.append({k: ref[k] - before[k] for k in ref} if resync else ref)
    return Run(traj, ref_traj, state, refs)


def _restart(refs: dict[str, RMSPropReference], params, fields: dict[str, Any]) -> None:
    for k, ref in refs.items():
        ref.params = np.asarray(params[k], ref.params.dtype)
        for name, tree in fields.items():
            if tree is not None:
                setattr(ref, name, np.asarray(tree[k], getattr(ref, name).dtype))
