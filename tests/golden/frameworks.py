"""Run the real frameworks' RMSProp on recorded gradients (for golden files and live tests).

Each ``run_*`` function takes a case's keyword arguments (the framework's own
names), a dtype name and a number of steps, trains a small linear model on
random data with the real optimizer, and returns ``{"grads/<leaf>": (steps, ...),
"params/<leaf>": (steps + 1, ...)}``: the gradients it was fed and the
parameters before the first and after every step. Tests replay the gradients
through ``optax_rmsprop.compat`` and compare the parameters.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import numpy as np

STEPS = 200
DTYPES = ("float32", "float64")
SCHEDULE = {"initial": 0.01, "rate": 0.99}  # lr_t = 0.01 * 0.99**t, t from 0


def initial_params(dtype: str, complex_leaf: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    params = {"w": rng.normal(size=(3, 2)).astype(dtype), "b": rng.normal(size=(2,)).astype(dtype)}
    if complex_leaf:
        ctype = "complex64" if dtype == "float32" else "complex128"
        params["c"] = (rng.normal(size=(2,)) + 1j * rng.normal(size=(2,))).astype(ctype)
    return params


def gradient(params: dict[str, np.ndarray], t: int) -> dict[str, np.ndarray]:
    """Gradient of a squared loss on step t's random batch (plus |c - target|^2)."""
    rng = np.random.default_rng(1000 + t)
    w, b = params["w"].astype(np.float64), params["b"].astype(np.float64)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    r = x @ w + b - y
    grads = {
        "w": (2 * x.T @ r / 8).astype(params["w"].dtype),
        "b": (2 * r.mean(0)).astype(params["b"].dtype),
    }
    if "c" in params:
        target = rng.normal(size=2) + 1j * rng.normal(size=2)
        grads["c"] = (2 * (params["c"].astype(np.complex128) - target)).astype(params["c"].dtype)
    return grads


def _record(names, get_params, set_grads, step, dtype, steps):
    out = {f"params/{k}": [v] for k, v in get_params().items()}
    for k in names:
        out[f"grads/{k}"] = []
    for t in range(steps):
        grads = gradient(get_params(), t)
        for k, g in grads.items():
            out[f"grads/{k}"].append(g)
        set_grads(grads)
        step(t)
        for k, v in get_params().items():
            out[f"params/{k}"].append(v)
    return {k: np.stack(v) for k, v in out.items()}


# -- PyTorch and timm ----------------------------------------------------------------------
def _run_torch(make_optimizer, kwargs: dict, dtype: str, steps: int, complex_leaf: bool):
    import torch

    kwargs = dict(kwargs)
    schedule = kwargs.pop("schedule", False)
    init = initial_params(dtype, complex_leaf=complex_leaf)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    opt = make_optimizer(list(tensors.values()), **kwargs)

    def set_grads(grads):
        for k, g in grads.items():
            tensors[k].grad = torch.tensor(g)

    def step(t):
        if schedule:
            opt.param_groups[0]["lr"] = SCHEDULE["initial"] * SCHEDULE["rate"] ** t
        opt.step()

    get = lambda: {k: v.detach().numpy().copy() for k, v in tensors.items()}  # noqa: E731
    return _record(list(tensors), get, set_grads, step, dtype, steps)


def run_pytorch(kwargs: dict, dtype: str, steps: int = STEPS) -> dict[str, np.ndarray]:
    import torch

    return _run_torch(torch.optim.RMSprop, kwargs, dtype, steps, complex_leaf=True)


def load_timm_rmsprop_tf():
    """timm's real ``RMSpropTF``, without importing timm/__init__ (which needs torchvision)."""
    if "timm.optim.rmsprop_tf" in sys.modules:
        return sys.modules["timm.optim.rmsprop_tf"].RMSpropTF
    spec = importlib.util.find_spec("timm")
    if spec is None:
        raise ImportError("timm is not installed")
    optim_dir = os.path.join(os.path.dirname(spec.origin), "optim")
    for name, path in (("timm", os.path.dirname(spec.origin)), ("timm.optim", optim_dir)):
        pkg = types.ModuleType(name)
        pkg.__path__ = [path]
        sys.modules[name] = pkg
    for mod in ("_types", "_helpers", "rmsprop_tf"):
        full = f"timm.optim.{mod}"
        s = importlib.util.spec_from_file_location(full, os.path.join(optim_dir, mod + ".py"))
        module = importlib.util.module_from_spec(s)
        sys.modules[full] = module
        s.loader.exec_module(module)
    return sys.modules["timm.optim.rmsprop_tf"].RMSpropTF


def run_timm(kwargs: dict, dtype: str, steps: int = STEPS) -> dict[str, np.ndarray]:
    rmsprop_tf = load_timm_rmsprop_tf()
    make = lambda params, **kw: rmsprop_tf(params, foreach=False, **kw)  # noqa: E731
    return _run_torch(make, kwargs, dtype, steps, complex_leaf=False)


# -- Keras 3 (JAX backend) -----------------------------------------------------------------
def run_keras(kwargs: dict, dtype: str, steps: int = STEPS) -> dict[str, np.ndarray]:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("JAX_ENABLE_X64", "1")  # float64 keras.Variables (if jax not yet up)
    import keras

    kwargs = dict(kwargs)
    if kwargs.pop("schedule", False):
        kwargs["learning_rate"] = keras.optimizers.schedules.ExponentialDecay(
            SCHEDULE["initial"], decay_steps=1, decay_rate=SCHEDULE["rate"]
        )
    floatx = keras.config.floatx()
    keras.config.set_floatx(kwargs.pop("floatx", floatx))
    try:
        return _run_keras(keras, kwargs, dtype, steps)
    finally:
        keras.config.set_floatx(floatx)


def _run_keras(keras, kwargs: dict, dtype: str, steps: int) -> dict[str, np.ndarray]:
    init = initial_params(dtype)
    variables = {k: keras.Variable(v, dtype=dtype) for k, v in init.items()}
    opt = keras.optimizers.RMSprop(**kwargs)
    opt.build(list(variables.values()))
    pending = {}

    def step(t):
        opt.apply([pending[k] for k in variables], list(variables.values()))

    get = lambda: {k: np.array(v.numpy()) for k, v in variables.items()}  # noqa: E731
    return _record(list(variables), get, pending.update, step, dtype, steps)


# -- TensorFlow: TF1 and legacy tf.keras ---------------------------------------------------
def _run_tf(make_optimizer, dtype, steps):
    import tensorflow as tf

    init = initial_params(dtype)
    variables = {k: tf.Variable(v) for k, v in init.items()}
    counter = {"t": 0}
    opt = make_optimizer(tf, counter)
    pending = {}

    def step(t):
        counter["t"] = t
        opt.apply_gradients([(tf.constant(pending[k]), variables[k]) for k in variables])

    get = lambda: {k: v.numpy().copy() for k, v in variables.items()}  # noqa: E731
    return _record(list(variables), get, pending.update, step, dtype, steps)


def run_tensorflow_v1(kwargs: dict, dtype: str, steps: int = STEPS) -> dict[str, np.ndarray]:
    kwargs = dict(kwargs)
    schedule = kwargs.pop("schedule", False)

    def make(tf, counter):
        lr = kwargs.pop("learning_rate")
        if schedule:
            lr = lambda: SCHEDULE["initial"] * SCHEDULE["rate"] ** counter["t"]  # noqa: E731
        return tf.compat.v1.train.RMSPropOptimizer(lr, **kwargs)

    return _run_tf(make, dtype, steps)


def run_keras_legacy(kwargs: dict, dtype: str, steps: int = STEPS) -> dict[str, np.ndarray]:
    def make(tf, counter):
        import tf_keras

        return tf_keras.optimizers.legacy.RMSprop(**kwargs)

    return _run_tf(make, dtype, steps)


# -- the option sets -----------------------------------------------------------------------
def _product(**axes):
    cases = [{}]
    for key, values in axes.items():
        cases = [dict(c, **{key: v}) for c in cases for v in values]
    return cases


CASES = {
    "pytorch": [
        dict(lr=0.01, alpha=0.9, **c)
        for c in _product(
            momentum=[0.0, 0.9],
            centered=[False, True],
            weight_decay=[0.0, 0.1],
            maximize=[False, True],
        )
    ]
    + [dict(lr=0.01, momentum=0.9, schedule=True)],
    "timm": [
        dict(lr=0.01, **c)
        for c in _product(momentum=[0.0, 0.9], centered=[False, True], weight_decay=[0.0, 0.1])
    ]
    + [
        dict(lr=0.01, momentum=0.9, weight_decay=0.1, decoupled_decay=True),
        dict(lr=0.01, momentum=0.9, lr_in_momentum=False, centered=True),
        dict(lr=0.01, momentum=0.9, schedule=True),
        dict(lr=0.01, momentum=0.9, lr_in_momentum=False, schedule=True),
    ],
    "keras": [
        dict(learning_rate=0.01, **c)
        for c in _product(momentum=[0.0, 0.9], centered=[False, True], weight_decay=[None, 0.1])
    ]
    + [dict(momentum=0.9, schedule=True)]
    + [
        dict(learning_rate=0.01, floatx="float64"),
        dict(learning_rate=0.01, momentum=0.9, centered=True, floatx="float64"),
    ],
    "keras_legacy": [
        dict(learning_rate=0.01, **c)
        for c in _product(momentum=[0.0, 0.9], centered=[False, True], decay=[0.0, 0.01])
    ]
    + [dict(learning_rate=0.01, epsilon=0.0)],
    "tensorflow_v1": [
        dict(learning_rate=0.01, **c) for c in _product(momentum=[0.0, 0.9], centered=[False, True])
    ]
    + [dict(learning_rate=0.01, momentum=0.9, epsilon=1e-3, schedule=True)],
}

RUNNERS = {
    "pytorch": run_pytorch,
    "timm": run_timm,
    "keras": run_keras,
    "keras_legacy": run_keras_legacy,
    "tensorflow_v1": run_tensorflow_v1,
}
