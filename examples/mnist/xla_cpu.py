"""XLA:CPU options for the trainer, applied before JAX creates its backends.

On jaxlib 0.10 XLA:CPU hands convolutions to YNNPACK, whose convolution
backward pass is slow: the CNN's weight gradient of conv2 alone takes 40 ms of
a 120 ms train step on 2 cores. Routing convolutions back to XLA's Eigen
kernels (YNNPACK keeps the matmuls) halves the step time; see
docs/benchmarks.md for the measurement. XLA reads ``XLA_FLAGS`` once, when it
creates its first backend, so :func:`configure` must run before anything asks
JAX for a device.

The flag is experimental and a jaxlib that does not know it aborts the process
on start, so it is first tried in a short child process, and it is never
added when ``XLA_FLAGS`` already sets it (your choice wins).
"""

from __future__ import annotations

import os
import subprocess
import sys

FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
CPU_TUNING = f"--{FLAG_NAME}=individual_dot"


def _accepted(flags: str) -> bool:
    """Whether this Python's jaxlib starts its CPU backend with ``flags`` in XLA_FLAGS."""
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    probe = [sys.executable, "-c", "import jax; jax.devices('cpu')"]
    try:
        return subprocess.run(probe, env=env, capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def configure(enable: bool = True) -> str | None:
    """Adds the trainer's XLA:CPU flag to ``XLA_FLAGS`` when it is safe and useful.

    Args:
      enable: False leaves ``XLA_FLAGS`` alone (``--no-cpu-tuning``).

    Returns:
      The flag that was added, or None when nothing was changed: tuning
      disabled, the flag already set by the user, or a jaxlib that rejects it.
      The flag only affects the CPU backend; on GPU and TPU it does nothing.
    """
    current = os.environ.get("XLA_FLAGS", "")
    if not enable or FLAG_NAME in current:
        return None
    flags = f"{current} {CPU_TUNING}".strip()
    if not _accepted(flags):
        return None
    os.environ["XLA_FLAGS"] = flags
    return CPU_TUNING
