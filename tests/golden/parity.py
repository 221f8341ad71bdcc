"""Replaying a framework's record through its port: single steps and a short free run.

A record (a golden file's case, or a live run) holds the gradients the real
framework was fed, its params before and after every step, and its slots after
every step (``tests/golden/frameworks.py``). Two checks use it:

- :func:`single_steps`: every step started from the framework's own params and
  state (the first from the port's ``init``), so each error is one step's
  rounding and a wrong convention shows at the step where it acts;
- :func:`free_run`: the port run on its own for the record's few steps, fed
  the recorded gradients; it checks that nothing accumulates (the count, a
  schedule). It is short on purpose: over thousands of steps rounding alone
  grows until it cannot tell a correct port from a wrong one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_rmsprop import compat
from tests.golden import frameworks

HERE = os.path.dirname(__file__)
PORTS = {
    "pytorch": compat.pytorch,
    "timm": compat.timm,
    "keras": compat.keras,
    "keras_legacy": compat.keras_legacy,
    "tensorflow_v1": compat.tensorflow_v1,
}
LIVE = {  # the module each framework's live check needs
    "pytorch": "torch",
    "timm": "timm",
    "keras": "keras",
    "keras_legacy": "tf_keras",
    "tensorflow_v1": "tensorflow",
}
COUNT_FIELD = {
    "pytorch": "step",
    "timm": "step",
    "keras": "iterations",
    "keras_legacy": "iterations",
    "tensorflow_v1": "step",
}
# One step from the framework's own state: the largest normwise error of a leaf
# (max |ours - theirs| / max |theirs|), in units of the dtype's epsilon; the most is a
# centered momentum buffer, where v - m*m cancels (`python -m tests.golden.report`).
SINGLE_STEP_EPS = 16
# A free run: the largest error after t steps, relative to max(|theirs|, 1), in
# epsilons per step (rounding differs, FMA and op fusion, never the formula).
FREE_RUN_EPS_PER_STEP = 4


def port(framework: str, case: dict) -> optax.GradientTransformation:
    """The port of ``case``, with each of its ``callables`` as a callable of the count."""
    kwargs, callables = frameworks.split_case(case)
    for name in callables:
        kwargs[name] = lambda count, value=kwargs[name]: value * frameworks.DRIFT**count
    return PORTS[framework](**kwargs)


def load(framework: str) -> tuple[dict, np.lib.npyio.NpzFile]:
    with open(os.path.join(HERE, f"{framework}.json")) as f:
        meta = json.load(f)
    return meta, np.load(os.path.join(HERE, f"{framework}.npz"))


def golden_record(data, i: int, dtype: str) -> dict[str, np.ndarray]:
    prefix = f"{i}/{dtype}/"
    return {k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)}


def golden(framework: str, i: int, dtype: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Case ``i`` of ``framework``'s golden file and its ``dtype`` record."""
    meta, data = load(framework)
    case = meta["cases"][i]
    assert case == frameworks.CASES[framework][i], "the cases changed: regenerate the golden files"
    return case, golden_record(data, i, dtype)


def check(framework: str, case: dict, record: dict, dtype: str) -> tuple[float, float]:
    """Both checks of ``case``'s port against ``record``: (single-step, free-run) errors."""
    tx = port(framework, case)
    return check_single_steps(framework, tx, record, dtype), check_free_run(tx, record, dtype)


def _importable(name: str) -> bool:
    """Whether module ``name`` can be imported (or already was, maybe as a bare package
    stand-in without ``__spec__``, as ``frameworks.load_timm_rmsprop_tf`` makes)."""
    if name in sys.modules:
        return True
    return importlib.util.find_spec(name) is not None


def check_live(framework: str, cases: Iterable[dict], dtypes: Sequence[str]) -> None:
    """Runs the real framework on every case and dtype and checks the port against it.

    Skips (the golden records stand in) when the framework is not importable.
    """
    if not _importable(LIVE[framework]):
        pytest.skip(f"{LIVE[framework]} is not installed: golden records only")
    for case in cases:
        for dtype in dtypes:
            check(framework, case, frameworks.RUNNERS[framework](case, dtype), dtype)


def golden_cases(dtypes=frameworks.DTYPES) -> list[tuple[str, int, str]]:
    """``(framework, case index, dtype)`` for every golden file present."""
    return [
        (fw, i, dtype)
        for fw in PORTS
        if os.path.exists(os.path.join(HERE, f"{fw}.json"))
        for i in range(len(frameworks.CASES[fw]))
        for dtype in dtypes
    ]


def fast_tier(cases: Iterable[tuple[str, int, str]]) -> list:
    """``cases`` as pytest params, all but each framework's first case and dtype marked slow.

    The fast tier (``-m "not slow"``) then checks every port once; CI runs them all.
    """
    seen, params = set(), []
    for case in cases:
        first = case[0] not in seen
        seen.add(case[0])
        params.append(pytest.param(*case, marks=() if first else pytest.mark.slow))
    return params


def _leaves(record: dict, prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in record.items() if k.startswith(prefix)}


def _slot_fields(record: dict) -> dict[str, dict[str, np.ndarray]]:
    fields = {}
    for key, value in _leaves(record, "state/").items():
        field, leaf = key.split("/")
        fields.setdefault(field, {})[leaf] = value
    return fields


def single_steps(framework: str, tx: optax.GradientTransformation, record: dict):
    """Every recorded step of ``tx``, each started from the framework's own params and state.

    Returns the params after each step and the slots after each step
    (``{field: {leaf: (steps, ...)}}``), batched over the steps like the record.
    """
    params, grads = _leaves(record, "params/"), _leaves(record, "grads/")
    recorded = _slot_fields(record)
    init = tx.init({k: jnp.asarray(v[0]) for k, v in params.items()})
    count = COUNT_FIELD[framework]
    ours = {f for f in init._fields if f != count and getattr(init, f) is not None}
    assert ours == set(recorded), f"the port has slots {ours}, the framework {set(recorded)}"
    steps = next(iter(grads.values())).shape[0]
    before = {  # the state before step t: init for t = 0, else the framework's after t - 1
        field: {
            k: jnp.concatenate([getattr(init, field)[k][None], v[:-1]]) for k, v in slots.items()
        }
        for field, slots in recorded.items()
    }
    states = init._replace(**{count: jnp.arange(steps, dtype=jnp.int32)}, **before)
    start = {k: v[:-1] for k, v in params.items()}
    updates, after = jax.jit(jax.vmap(tx.update))(grads, states, start)
    new_params = optax.apply_updates(start, updates)
    return new_params, {field: getattr(after, field) for field in recorded}


def check_single_steps(framework: str, tx, record: dict, dtype: str) -> float:
    """Asserts every single step agrees; returns the largest error in epsilons."""
    new_params, new_slots = single_steps(framework, tx, record)
    pairs = [(f"params/{k}", v, record[f"params/{k}"][1:]) for k, v in new_params.items()]
    pairs += [
        (f"state/{field}/{k}", v, record[f"state/{field}/{k}"])
        for field, slots in new_slots.items()
        for k, v in slots.items()
    ]
    eps = np.finfo(dtype).eps
    worst = 0.0
    for name, got, want in pairs:
        got = np.asarray(got)
        assert got.dtype == want.dtype, name
        axes = tuple(range(1, want.ndim))
        scale = np.maximum(np.abs(want).max(axis=axes), np.finfo(dtype).tiny)
        err = np.abs(got - want).max(axis=axes) / scale / eps
        np.testing.assert_array_less(err, SINGLE_STEP_EPS, err_msg=f"{name} (steps, in eps)")
        worst = max(worst, float(err.max()))
    return worst


def free_run(tx: optax.GradientTransformation, record: dict) -> dict[str, np.ndarray]:
    """``tx`` on its own from the first params, fed the recorded gradients."""
    grads = _leaves(record, "grads/")
    params = {k: jnp.asarray(v[0]) for k, v in _leaves(record, "params/").items()}
    state, update = tx.init(params), tx.update  # eager: single_steps covers jit
    out = {k: [np.asarray(v)] for k, v in params.items()}
    for t in range(next(iter(grads.values())).shape[0]):
        updates, state = update({k: jnp.asarray(g[t]) for k, g in grads.items()}, state, params)
        params = optax.apply_updates(params, updates)
        for k in out:
            out[k].append(np.asarray(params[k]))
    return {k: np.stack(v) for k, v in out.items()}


def check_free_run(tx: optax.GradientTransformation, record: dict, dtype: str) -> float:
    """Asserts the free run agrees; returns the largest error in epsilons per step."""
    worst = 0.0
    eps = np.finfo(dtype).eps
    for k, got in free_run(tx, record).items():
        want = record[f"params/{k}"]
        assert got.dtype == want.dtype, k
        steps = np.arange(1, len(want) + 1).reshape((-1,) + (1,) * (want.ndim - 1))
        err = np.abs(got - want) / np.maximum(np.abs(want), 1.0) / eps / steps
        np.testing.assert_array_less(err, FREE_RUN_EPS_PER_STEP, err_msg=k)
        worst = max(worst, float(err.max()))
    return worst
