"""Run the real frameworks' RMSProp on recorded gradients (for golden files and live tests).

Each ``run_*`` function takes a case's keyword arguments (the framework's own
names), a dtype name and a number of steps, trains a small linear model on
random data with the real optimizer, and returns

- ``grads/<leaf>``: the gradients it was fed, ``(steps, ...)``;
- ``params/<leaf>``: the parameters before the first and after every step,
  ``(steps + 1, ...)``;
- ``state/<field>/<leaf>``: the optimizer's slots after every step,
  ``(steps, ...)``, under the field names of the port's state
  (``square_avg``, ``velocity``, ``rms``, ...).

Tests replay the gradients through ``optax_rmsprop.compat``: single steps
started from the framework's own params and state, and a short free run.

A case is the framework's keyword arguments, plus ``callables``: the names of
hyperparameters passed as callables of the step, ``value * DRIFT**t``
(``t`` from 0), so that a port that reads a callable once is caught.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from collections.abc import Callable

import numpy as np

STEPS = 30
DTYPES = ("float32", "float64")
DRIFT = 0.99  # a callable hyperparameter's value at step t: value * DRIFT**t


def drifting(value: float, t: int) -> float:
    """The value a callable hyperparameter returns at the 0-based step ``t``."""
    return value * DRIFT**t


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


def split_case(case: dict) -> tuple[dict, tuple[str, ...]]:
    """A case's keyword arguments without ``callables``, and the callable names."""
    kwargs = dict(case)
    return kwargs, tuple(kwargs.pop("callables", ()))


class Run:
    """One framework run: how to read its params and slots, set gradients and step."""

    def __init__(self, get_params, get_state, set_grads, step):
        self.get_params: Callable[[], dict] = get_params
        self.get_state: Callable[[], dict] = get_state  # {field: {leaf: array}}
        self.set_grads: Callable[[dict], None] = set_grads
        self.step: Callable[[int], None] = step

    def record(self, steps: int) -> dict[str, np.ndarray]:
        out = {f"params/{k}": [v] for k, v in self.get_params().items()}
        for t in range(steps):
            grads = gradient(self.get_params(), t)
            for k, g in grads.items():
                out.setdefault(f"grads/{k}", []).append(g)
            self.set_grads(grads)
            self.step(t)
            for k, v in self.get_params().items():
                out[f"params/{k}"].append(v)
            for field, leaves in self.get_state().items():
                for k, v in leaves.items():
                    out.setdefault(f"state/{field}/{k}", []).append(np.array(v, copy=True))
        return {k: np.stack(v) for k, v in out.items()}


# -- PyTorch and timm ----------------------------------------------------------------------
TORCH_SLOTS = ("square_avg", "grad_avg", "momentum_buffer")


def _run_torch(make_optimizer, case: dict, dtype: str, steps: int, complex_leaf: bool):
    import torch

    kwargs, callables = split_case(case)
    init = initial_params(dtype, complex_leaf=complex_leaf)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    opt = make_optimizer(list(tensors.values()), **kwargs)

    def set_grads(grads):
        for k, g in grads.items():
            tensors[k].grad = torch.tensor(g)

    def step(t):
        if "lr" in callables:  # a per-step scheduler
            opt.param_groups[0]["lr"] = drifting(kwargs["lr"], t)
        opt.step()

    def get_state():
        return {
            slot: {k: opt.state[v][slot].detach().numpy() for k, v in tensors.items()}
            for slot in TORCH_SLOTS
            if slot in opt.state[tensors["w"]]
        }

    get_params = lambda: {k: v.detach().numpy().copy() for k, v in tensors.items()}
    return Run(get_params, get_state, set_grads, step).record(steps)


def run_pytorch(case: dict, dtype: str, steps: int = STEPS) -> dict[str, np.ndarray]:
    import torch

    return _run_torch(torch.optim.RMSprop, case, dtype, steps, complex_leaf=True)


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


def run_timm(case: dict, dtype: str, steps: int = STEPS) -> dict[str, np.ndarray]:
    rmsprop_tf = load_timm_rmsprop_tf()
    make = lambda params, **kw: rmsprop_tf(params, foreach=False, **kw)
    return _run_torch(make, case, dtype, steps, complex_leaf=False)


# -- Keras 3 (JAX backend) -----------------------------------------------------------------
def run_keras(case: dict, dtype: str, steps: int = STEPS) -> dict[str, np.ndarray]:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("JAX_ENABLE_X64", "1")  # float64 keras.Variables (if jax not yet up)
    import keras

    kwargs, callables = split_case(case)
    if "learning_rate" in callables:
        kwargs["learning_rate"] = keras.optimizers.schedules.ExponentialDecay(
            kwargs["learning_rate"], decay_steps=1, decay_rate=DRIFT
        )
    floatx = keras.config.floatx()
    keras.config.set_floatx(kwargs.pop("floatx", floatx))
    try:
        return _run_keras(keras, kwargs, dtype, steps)
    finally:
        keras.config.set_floatx(floatx)


def _run_keras(keras, kwargs: dict, dtype: str, steps: int) -> dict[str, np.ndarray]:
    init = initial_params(dtype)
    variables = {k: keras.Variable(v, dtype=dtype, name=k) for k, v in init.items()}
    excluded = kwargs.pop("exclude_from_weight_decay", None)
    opt = keras.optimizers.RMSprop(**kwargs)
    if excluded is not None:
        opt.exclude_from_weight_decay(var_names=excluded)
    opt.build(list(variables.values()))
    pending = {}

    def step(t):
        opt.apply([pending[k] for k in variables], list(variables.values()))

    def get_state():
        slots = {
            "velocity": opt._velocities,
            "momentum": opt._momentums,
            "average_gradient": opt._average_gradients,
        }
        return {
            field: {k: values[opt._get_variable_index(v)].numpy() for k, v in variables.items()}
            for field, values in slots.items()
            if values
        }

    get_params = lambda: {k: np.array(v.numpy()) for k, v in variables.items()}
    return Run(get_params, get_state, pending.update, step).record(steps)


# -- TensorFlow: TF1 and legacy tf.keras ---------------------------------------------------
def _run_tf(make_optimizer, slots: dict[str, str], case: dict, dtype: str, steps: int):
    """``slots``: the port's state field for each TF slot name."""
    import tensorflow as tf

    kwargs, callables = split_case(case)
    counter = {"t": 0}
    for name in callables:  # TF calls these with no arguments at every step
        kwargs[name] = lambda value=kwargs[name]: drifting(value, counter["t"])
    init = initial_params(dtype)
    variables = {k: tf.Variable(v) for k, v in init.items()}
    opt = make_optimizer(**kwargs)
    pending = {}

    def step(t):
        counter["t"] = t
        opt.apply_gradients([(tf.constant(pending[k]), variables[k]) for k in variables])

    def get_state():
        names = opt.get_slot_names()
        return {
            field: {k: opt.get_slot(v, slot).numpy() for k, v in variables.items()}
            for slot, field in slots.items()
            if slot in names
        }

    get_params = lambda: {k: v.numpy().copy() for k, v in variables.items()}
    return Run(get_params, get_state, pending.update, step).record(steps)


def run_tensorflow_v1(case: dict, dtype: str, steps: int = STEPS) -> dict[str, np.ndarray]:
    import tensorflow as tf

    slots = {"rms": "rms", "momentum": "momentum", "mg": "mg"}
    return _run_tf(tf.compat.v1.train.RMSPropOptimizer, slots, case, dtype, steps)


def run_keras_legacy(case: dict, dtype: str, steps: int = STEPS) -> dict[str, np.ndarray]:
    import tf_keras

    slots = {"rms": "velocity", "momentum": "momentum", "mg": "average_gradient"}
    return _run_tf(tf_keras.optimizers.legacy.RMSprop, slots, case, dtype, steps)


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
    + [dict(lr=0.01, momentum=0.9, callables=["lr"])],
    "timm": [
        dict(lr=0.01, **c)
        for c in _product(momentum=[0.0, 0.9], centered=[False, True], weight_decay=[0.0, 0.1])
    ]
    + [
        dict(lr=0.01, momentum=0.9, weight_decay=0.1, decoupled_decay=True),
        dict(lr=0.01, momentum=0.9, lr_in_momentum=False, centered=True),
        dict(lr=0.01, momentum=0.9, callables=["lr"]),
        dict(lr=0.01, momentum=0.9, lr_in_momentum=False, callables=["lr"]),
    ]
    + [  # the cautious variant (crmsproptf)
        dict(lr=0.01, momentum=0.9, caution=True, **c)
        for c in _product(lr_in_momentum=[True, False], centered=[False, True])
    ]
    + [
        dict(lr=0.01, momentum=0.9, caution=True, weight_decay=0.1),
        dict(lr=0.01, momentum=0.9, caution=True, weight_decay=0.1, decoupled_decay=True),
        dict(lr=0.01, caution=True),  # no momentum: caution changes nothing
    ],
    "keras": [
        dict(learning_rate=0.01, **c)
        for c in _product(momentum=[0.0, 0.9], centered=[False, True], weight_decay=[None, 0.1])
    ]
    + [dict(learning_rate=0.01, momentum=0.9, callables=["learning_rate"])]
    + [
        dict(learning_rate=0.01, floatx="float64"),
        dict(learning_rate=0.01, momentum=0.9, centered=True, floatx="float64"),
    ]
    + [  # exclude_from_weight_decay(var_names=[...])
        dict(learning_rate=0.01, weight_decay=0.1, exclude_from_weight_decay=["b"]),
        dict(learning_rate=0.01, momentum=0.9, weight_decay=0.1, exclude_from_weight_decay=["^w"]),
    ],
    "keras_legacy": [
        dict(learning_rate=0.01, **c)
        for c in _product(momentum=[0.0, 0.9], centered=[False, True], decay=[0.0, 0.01])
    ]
    + [dict(learning_rate=0.01, epsilon=0.0)]
    + [  # callables: a callable momentum, even 0, takes the momentum path (eps inside)
        dict(learning_rate=0.01, momentum=0.0, callables=["momentum"]),
        dict(learning_rate=0.01, momentum=0.0, centered=True, callables=["momentum"]),
        dict(learning_rate=0.01, rho=0.9, callables=["learning_rate", "rho"]),
        dict(
            learning_rate=0.01,
            rho=0.9,
            momentum=0.9,
            decay=0.01,
            callables=["learning_rate", "rho", "momentum"],
        ),
    ],
    "tensorflow_v1": [
        dict(learning_rate=0.01, **c) for c in _product(momentum=[0.0, 0.9], centered=[False, True])
    ]
    + [dict(learning_rate=0.01, momentum=0.9, epsilon=1e-3, callables=["learning_rate"])]
    + [
        dict(
            learning_rate=0.01,
            decay=0.9,
            momentum=0.9,
            epsilon=1e-3,
            centered=True,
            callables=["learning_rate", "decay", "momentum", "epsilon"],
        )
    ],
}

RUNNERS = {
    "pytorch": run_pytorch,
    "timm": run_timm,
    "keras": run_keras,
    "keras_legacy": run_keras_legacy,
    "tensorflow_v1": run_tensorflow_v1,
}
