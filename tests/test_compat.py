"""optax_rmsprop.compat against the real frameworks.

Always against the golden trajectories in tests/golden (made by
``python -m tests.golden.generate`` with the real torch, timm, Keras and
TensorFlow), and against the live framework too when it is importable here.
The recorded gradients are replayed open loop, so every step is compared.
"""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_rmsprop import compat
from tests.golden import frameworks

HERE = os.path.join(os.path.dirname(__file__), "golden")
PORTS = {
    "pytorch": compat.pytorch,
    "timm": compat.timm,
    "keras": compat.keras,
    "keras_legacy": compat.keras_legacy,
    "tensorflow_v1": compat.tensorflow_v1,
}
LIVE = {
    "pytorch": "torch",
    "timm": "timm",
    "keras": "keras",
    "keras_legacy": "tf_keras",
    "tensorflow_v1": "tensorflow",
}
# float32: the largest error allowed after t steps, in units of float32 epsilon
# times the parameter's magnitude, per step: rounding differs (FMA, op fusion),
# never the formula.
F32_ULPS_PER_STEP = 4


def _schedule(t):
    return frameworks.SCHEDULE["initial"] * frameworks.SCHEDULE["rate"] ** t


def _port(framework: str, case: dict):
    kwargs = dict(case)
    if kwargs.pop("schedule", False):
        kwargs["lr" if framework in ("pytorch", "timm") else "learning_rate"] = _schedule
    return PORTS[framework](**kwargs)


def _replay(framework: str, case: dict, record: dict, dtype: str) -> dict[str, np.ndarray]:
    leaves = sorted({k.split("/")[1] for k in record if k.startswith("params/")})
    params = {k: jnp.asarray(record[f"params/{k}"][0]) for k in leaves}
    tx = _port(framework, case)
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = {k: [np.asarray(v)] for k, v in params.items()}
    for t in range(record[f"grads/{leaves[0]}"].shape[0]):
        grads = {k: jnp.asarray(record[f"grads/{k}"][t]) for k in leaves}
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for k in leaves:
            out[k].append(np.asarray(params[k]))
    return {k: np.stack(v) for k, v in out.items()}


def _compare(ours: dict, record: dict, dtype: str) -> float:
    """Asserts agreement; returns the largest deviation (relative, or in f32 ulps/step)."""
    worst = 0.0
    for k, got in ours.items():
        want = record[f"params/{k}"]
        assert got.dtype == want.dtype, k
        scale = np.maximum(np.abs(want), 1.0)
        err = np.abs(got - want) / scale
        if dtype == "float64":
            np.testing.assert_array_less(err, 1e-12, err_msg=k)
            worst = max(worst, float(err.max()))
        else:
            steps = np.arange(1, len(err) + 1).reshape((-1,) + (1,) * (err.ndim - 1))
            ulps = err / np.finfo(np.float32).eps / steps
            np.testing.assert_array_less(ulps, F32_ULPS_PER_STEP, err_msg=k)
            worst = max(worst, float(ulps.max()))
    return worst


def _golden(framework: str):
    with open(os.path.join(HERE, f"{framework}.json")) as f:
        meta = json.load(f)
    data = np.load(os.path.join(HERE, f"{framework}.npz"))
    return meta, data


def _record(data, i: int, dtype: str) -> dict:
    prefix = f"{i}/{dtype}/"
    return {k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)}


GOLDEN_CASES = [
    (fw, i, dtype)
    for fw in PORTS
    if os.path.exists(os.path.join(HERE, f"{fw}.json"))
    for i in range(len(frameworks.CASES[fw]))
    for dtype in frameworks.DTYPES
]


@pytest.mark.parametrize("framework,case_index,dtype", GOLDEN_CASES)
def test_matches_golden_trajectory(framework, case_index, dtype):
    meta, data = _golden(framework)
    case = meta["cases"][case_index]
    assert case == frameworks.CASES[framework][case_index], "regenerate the golden files"
    record = _record(data, case_index, dtype)
    _compare(_replay(framework, case, record, dtype), record, dtype)


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("framework", list(PORTS))
def test_matches_live_framework(framework):
    if not _importable(LIVE[framework]):
        pytest.skip(f"{LIVE[framework]} is not installed: golden files only")
    for case in frameworks.CASES[framework]:
        for dtype in frameworks.DTYPES:
            record = frameworks.RUNNERS[framework](case, dtype, steps=50)
            _compare(_replay(framework, case, record, dtype), record, dtype)


def test_golden_files_can_detect_a_wrong_port():
    _, data = _golden("pytorch")
    record = _record(data, 0, "float64")
    wrong = _replay("pytorch", dict(frameworks.CASES["pytorch"][0], alpha=0.91), record, "float64")
    with pytest.raises(AssertionError):
        _compare(wrong, record, "float64")


def test_keras_floatx_float64_is_not_the_float32_default():
    # With keras.config.set_floatx("float64") Keras keeps the learning rate in
    # float64; the float32-rounded default port then misses by ~1e-8.
    meta, data = _golden("keras")
    i = next(i for i, c in enumerate(meta["cases"]) if c.get("floatx") == "float64")
    record = _record(data, i, "float64")
    _compare(_replay("keras", meta["cases"][i], record, "float64"), record, "float64")
    default = {k: v for k, v in meta["cases"][i].items() if k != "floatx"}
    with pytest.raises(AssertionError):
        _compare(_replay("keras", default, record, "float64"), record, "float64")


def test_keras_floatx_names_a_float_dtype():
    with pytest.raises(ValueError, match="floatx must be one of float16, bfloat16"):
        compat.keras(floatx="int8")
