"""optax_rmsprop.compat against the real frameworks, with x64 on and off.

Always against the golden records in tests/golden (made by
``python -m tests.golden.generate`` with the real torch, timm, Keras and
TensorFlow), and against the live framework too when it is importable here.
Each record is checked step by step, every step started from the framework's
own params and state, and as a short free run (``tests/golden/parity.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_rmsprop import compat
from tests import jax_compat
from tests.golden import frameworks, parity
from tests.helpers import update_and_apply


def _float32_jax(case: dict) -> bool:
    """A case that runs in float32 JAX: not Keras's ``floatx="float64"`` (a float64 lr)."""
    return case.get("floatx") != "float64"


# x64 on (the library tests' default) and off, as users run JAX: then every hyperparameter,
# schedule and count the ports compute is float32 or int32, and float32 records are checked.
X64_OFF = [
    (fw, i, dtype)
    for fw, i, dtype in parity.golden_cases(dtypes=("float32",))
    if _float32_jax(frameworks.CASES[fw][i])
]
GOLDEN = [
    pytest.param(*p.values, x64, marks=p.marks, id=f"{'-'.join(map(str, p.values))}-x64={x64}")
    for x64, cases in ((True, parity.golden_cases()), (False, X64_OFF))
    for p in parity.fast_tier(cases)
]


@pytest.mark.parametrize("framework,case_index,dtype,x64", GOLDEN)
def test_matches_golden_record(framework, case_index, dtype, x64):
    with jax_compat.enable_x64(x64):
        case, record = parity.golden(framework, case_index, dtype)
        parity.check(framework, case, record, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("x64", [True, False], ids=["x64", "float32"])
@pytest.mark.parametrize("framework", list(parity.PORTS))
def test_matches_live_framework(framework, x64):
    with jax_compat.enable_x64(x64):
        if x64:
            parity.check_live(framework, frameworks.CASES[framework], frameworks.DTYPES)
        else:
            cases = filter(_float32_jax, frameworks.CASES[framework])
            parity.check_live(framework, cases, ["float32"])


def test_every_port_is_covered_with_x64_off():
    assert {fw for fw, _, _ in X64_OFF} == set(parity.PORTS)
    with jax_compat.enable_x64(False):
        tx = compat.tensorflow_v1(lambda count: 0.1 * 0.5**count, momentum=0.9)
        state = tx.init(jnp.zeros(2))
        assert jnp.asarray(1.0).dtype == jnp.float32 and state.step.dtype == jnp.int32
        updates, _ = tx.update(jnp.ones(2), state)
        assert updates.dtype == jnp.float32


def _fails_on(framework: str, case_index: int, tx: optax.GradientTransformation) -> None:
    """``tx`` is not the framework's ``case``: both checks say so."""
    _, record = parity.golden(framework, case_index, "float64")
    with pytest.raises(AssertionError):
        parity.check_single_steps(framework, tx, record, "float64")
    with pytest.raises(AssertionError):
        parity.check_free_run(tx, record, "float64")


def _case_index(framework: str, **wanted) -> int:
    return next(i for i, c in enumerate(frameworks.CASES[framework]) if c == wanted)


def test_golden_records_detect_a_wrong_port():
    _fails_on(
        "pytorch", 0, parity.port("pytorch", dict(frameworks.CASES["pytorch"][0], alpha=0.91))
    )


def test_keras_legacy_callable_momentum_is_not_a_zero_momentum():
    # tf.keras 2 takes the momentum kernel (eps inside the root) for any callable
    # momentum, even one returning 0; the float 0.0 takes the Python path.
    i = _case_index("keras_legacy", learning_rate=0.01, momentum=0.0, callables=["momentum"])
    _, record = parity.golden("keras_legacy", i, "float64")
    with pytest.raises(AssertionError):
        parity.check_free_run(compat.keras_legacy(0.01, momentum=0.0), record, "float64")


def test_keras_legacy_array_momentum_takes_tf_kernel_path():
    # as a tf.Tensor momentum does in tf.keras 2: the structure cannot depend on its value
    i = _case_index("keras_legacy", learning_rate=0.01, momentum=0.0, callables=["momentum"])
    tx = compat.keras_legacy(0.01, momentum=jnp.asarray(0.0))
    for dtype in frameworks.DTYPES:
        _, record = parity.golden("keras_legacy", i, dtype)
        parity.check_single_steps("keras_legacy", tx, record, dtype)
        parity.check_free_run(tx, record, dtype)


@pytest.mark.parametrize(
    "dtype,rtol",
    [
        ("float16", 1e-3),
        ("float32", 1e-6),
        ("float64", 1e-6),
        ("complex64", 1e-6),
        ("complex128", 1e-6),
    ],
)
def test_keras_legacy_passes_tf_keras_test_callable_params(dtype, rtol):
    # tf_keras/optimizers/legacy/rmsprop_test.py, testCallableParams: callable lr,
    # rho and momentum (returning 0: the kernel path, eps inside), epsilon 1.0, with
    # its tolerances (assertAllCloseAccordingToType): its expected values use rho
    # exactly, TF (and the port) a float32 rho. The golden records test the rest.
    tx = compat.keras_legacy(lambda c: 2.0, lambda c: 0.9, lambda c: 0.0, 1.0)
    params = {"var0": jnp.array([1.0, 2.0], dtype), "var1": jnp.array([3.0, 4.0], dtype)}
    grads = {"var0": jnp.full(2, 0.1, dtype), "var1": jnp.full(2, 0.01, dtype)}
    state = tx.init(params)
    want = {"var0": np.array([1.0, 2.0]), "var1": np.array([3.0, 4.0])}
    for ms in ({"var0": 0.001, "var1": 1e-5}, {"var0": 0.0019, "var1": 1.9e-5}):
        params, state = update_and_apply(tx)(params, state, grads)
        for k in want:
            want[k] = want[k] - float(grads[k][0].real) * 2.0 / np.sqrt(ms[k] + 1.0)
            assert params[k].dtype == jnp.dtype(dtype)
            np.testing.assert_allclose(params[k], want[k], rtol=rtol)


def test_keras_legacy_callables_are_called_every_step():
    case = frameworks.CASES["keras_legacy"][-1]
    i = len(frameworks.CASES["keras_legacy"]) - 1
    assert case["callables"] == ["learning_rate", "rho", "momentum"]
    frozen = {k: v for k, v in case.items() if k != "callables"}  # the values at step 0
    _fails_on("keras_legacy", i, parity.port("keras_legacy", frozen))


def test_keras_exclusion_is_not_optax_masked():
    # optax.masked passes the excluded leaves' raw gradients through (no RMSProp
    # at all); Keras excludes them from the weight decay only.
    i = _case_index("keras", learning_rate=0.01, weight_decay=0.1, exclude_from_weight_decay=["b"])
    _fails_on("keras", i, compat.keras(0.01, weight_decay=0.1))
    masked = optax.masked(compat.keras(0.01, weight_decay=0.1), {"w": True, "b": False})
    _, record = parity.golden("keras", i, "float64")
    with pytest.raises(AssertionError):
        parity.check_free_run(masked, record, "float64")


@pytest.mark.parametrize(
    "mask",
    [{"w": True, "b": False}, lambda params: {k: k != "b" for k in params}],
    ids=["tree", "callable"],
)
def test_keras_weight_decay_mask_is_keras_exclusion(mask):
    i = _case_index("keras", learning_rate=0.01, weight_decay=0.1, exclude_from_weight_decay=["b"])
    for dtype in frameworks.DTYPES:
        _, record = parity.golden("keras", i, dtype)
        tx = compat.keras(0.01, weight_decay=0.1, weight_decay_mask=mask)
        parity.check_single_steps("keras", tx, record, dtype)
        parity.check_free_run(tx, record, dtype)


def _decay_only(params, **kwargs):
    """The params after one zero-gradient step of Keras's port: its weight decay alone."""
    tx = compat.keras(0.1, weight_decay=0.5, **kwargs)
    zeros = jax.tree.map(jnp.zeros_like, params)
    return optax.apply_updates(params, tx.update(zeros, tx.init(params), params)[0])


def test_keras_excluded_names_search_the_parameter_path():
    params = {
        "Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
        "norm": {"scale": jnp.ones(2)},
    }
    out = _decay_only(params, exclude_from_weight_decay=["bias", "^norm/"])
    np.testing.assert_allclose(out["Dense_0"]["kernel"], 0.95)  # 1 - 1 * 0.5 * 0.1
    np.testing.assert_array_equal(out["Dense_0"]["bias"], 1.0)
    np.testing.assert_array_equal(out["norm"]["scale"], 1.0)
    prefix = _decay_only(params, weight_decay_mask={"Dense_0": False, "norm": True})
    np.testing.assert_array_equal(prefix["Dense_0"]["kernel"], 1.0)
    np.testing.assert_allclose(prefix["norm"]["scale"], 0.95)
    mask = {"Dense_0": True, "norm": False}
    both = _decay_only(params, weight_decay_mask=mask, exclude_from_weight_decay=["bias"])
    np.testing.assert_allclose(both["Dense_0"]["kernel"], 0.95)
    np.testing.assert_array_equal(both["Dense_0"]["bias"], 1.0)
    np.testing.assert_array_equal(both["norm"]["scale"], 1.0)


def test_keras_callable_mask_needs_params():
    tx = compat.keras(0.1, weight_decay=0.5, weight_decay_mask=lambda p: True)
    g = jnp.ones(2)
    with pytest.raises(ValueError, match="weight_decay=0.5 needs the parameters"):
        tx.update(g, tx.init(g))


def test_timm_caution_changes_the_step():
    case = dict(lr=0.01, momentum=0.9, caution=True, lr_in_momentum=True, centered=False)
    _fails_on("timm", _case_index("timm", **case), compat.timm(0.01, momentum=0.9))


def test_timm_caution_masks_and_rescales_one_step():
    # alpha=0, eps=0, |g| = 1: the buffer becomes 0.5 * b + g = [1.2, -1, 2, 0]. Two
    # of four signs agree with g (0 does not), so those two are kept and doubled.
    tx = compat.timm(lr=1.0, alpha=0.0, eps=0.0, momentum=0.5, caution=True)
    g = jnp.array([1.0, 1.0, 1.0, -1.0])
    state = tx.init(g)._replace(momentum_buffer=jnp.array([0.4, -4.0, 2.0, 2.0]))
    u, new = tx.update(g, state)
    np.testing.assert_allclose(new.momentum_buffer, [1.2, -1.0, 2.0, 0.0])  # kept unmasked
    np.testing.assert_allclose(u, [-2.4, 0.0, -4.0, 0.0])
