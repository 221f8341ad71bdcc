"""Every framework port with x64 off, as users run JAX: float32, to rounding.

The rest of the compat tests run with float64 enabled (``tests/conftest.py``);
this module turns it off, so every hyperparameter, schedule and count the ports
compute is float32 or int32, as in a user's program. Each port is checked
against its float32 golden records, and against the live framework in float32
where it is importable: single steps from the framework's own state, to a few
float32 epsilons, and a short free run (``tests/golden/parity.py``).
"""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from optax_rmsprop import _jax_versions, compat
from tests.golden import frameworks, parity


@pytest.fixture(autouse=True)
def _float64():  # overrides tests/conftest.py's fixture of the same name
    with _jax_versions.enable_x64(False):
        yield


def _float32_jax(case: dict) -> bool:
    """A case that runs in float32 JAX: not Keras's ``floatx="float64"`` (a float64 lr)."""
    return case.get("floatx") != "float64"


CASES = [
    (fw, i, dtype)
    for fw, i, dtype in parity.golden_cases(dtypes=("float32",))
    if _float32_jax(frameworks.CASES[fw][i])
]


def test_x64_is_off():
    tx = compat.tensorflow_v1(lambda count: 0.1 * 0.5**count, momentum=0.9)
    state = tx.init(jnp.zeros(2))
    assert jnp.asarray(1.0).dtype == jnp.float32
    assert state.step.dtype == jnp.int32
    updates, _ = tx.update(jnp.ones(2), state)
    assert updates.dtype == jnp.float32


def test_every_port_is_covered():
    assert {fw for fw, _, _ in CASES} == set(parity.PORTS)


@pytest.mark.parametrize("framework,case_index,dtype", parity.fast_tier(CASES))
def test_matches_float32_golden_record(framework, case_index, dtype):
    case, record = parity.golden(framework, case_index, dtype)
    parity.check(framework, case, record, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("framework", list(parity.PORTS))
def test_matches_live_framework_in_float32(framework):
    parity.check_live(framework, filter(_float32_jax, frameworks.CASES[framework]), ["float32"])
