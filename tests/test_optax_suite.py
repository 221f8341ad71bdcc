"""optax's own generic rmsprop tests, run with this library's ``rmsprop`` swapped in.

optax ships its test modules in its wheel. A child pytest loads them with the
plugin ``tests/optax_suite/swap_rmsprop.py``, which makes ``optax.rmsprop``
ours and keeps only the tests optax runs for rmsprop: optimisation of a
parabola and Rosenbrock (float32, complex64), no recompilation, extra
arguments, ``inject_hyperparams`` (updates and state, structure included),
dtype preservation and stability, ``MultiSteps``, float64, and sharding.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import optax
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SUITE = pathlib.Path(optax.__file__).parent / "_src"
MODULES = ["alias_test.py", "float64_test.py", "sharding_test.py"]


def _run_suite(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    flags = f"-q -p no:cacheprovider -c {os.devnull} -p tests.optax_suite.swap_rmsprop".split()
    cmd = [sys.executable, "-m", "pytest", *flags, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)


@pytest.mark.slow
def test_optax_rmsprop_suite_passes_with_ours_swapped_in():
    modules = [str(SUITE / m) for m in MODULES if (SUITE / m).exists()]
    if not modules:
        pytest.skip(f"this optax ({optax.__version__}) ships no test modules")
    try:
        import sklearn  # noqa: F401  (alias_test.py imports it)
    except ImportError:
        modules = [m for m in modules if not m.endswith("alias_test.py")]
    run = _run_suite(*modules)
    tail = (run.stdout + run.stderr)[-3000:]
    assert run.returncode == 0, tail
    passed = int(re.search(r"(\d+) passed", tail).group(1))
    assert passed >= (30 if "alias_test.py" in str(modules) else 1), tail


@pytest.mark.slow
def test_the_swap_is_in_force():
    # The plugin must replace optax.rmsprop before optax's tests take it; a
    # probe test run under the plugin sees ours.
    probe = ROOT / "tests" / "optax_suite" / "probe_rmsprop_test.py"
    run = _run_suite(str(probe))
    assert run.returncode == 0, (run.stdout + run.stderr)[-2000:]
    assert "1 passed" in run.stdout
