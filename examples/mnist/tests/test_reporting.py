"""What a run reports: the compile time that examples/s leaves out."""

from __future__ import annotations

import json
import subprocess
import sys

from examples.mnist.tests import helpers

# In a fresh process: importing the trainer must not start the count; listening twice
# must count each compilation once, as a listener of the test's own counts it.
COMPILE_TIME = """
import json
import jax, jax.numpy as jnp
from examples.mnist import main, reporting  # every module of the trainer

jax.jit(lambda x: x + 1)(jnp.ones(3)).block_until_ready()
before_start = reporting.compile_time.seconds
reference = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, **_: reference.append(secs) if event in reporting.COMPILE_EVENTS else None
)
reporting.compile_time.listen()
reporting.compile_time.listen()
jax.jit(lambda x: x * 2)(jnp.ones(3)).block_until_ready()
print(json.dumps([before_start, reporting.compile_time.seconds, sum(reference)]))
"""


def test_compile_time_is_counted_from_the_start_of_training_once():
    run = subprocess.run(
        [sys.executable, "-c", COMPILE_TIME],
        cwd=helpers.ROOT,
        env=helpers.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    before_start, counted, reference = json.loads(run.stdout.splitlines()[-1])
    assert before_start == 0.0
    assert reference > 0
    assert counted == reference
