"""XLA:CPU options for the trainer, applied before JAX creates its backends.

On jaxlib 0.10 XLA:CPU hands convolutions to YNNPACK, whose convolution
backward pass is slow: the CNN's weight gradient of conv2 alone takes 40 ms of
a 120 ms train step on 2 cores. Routing convolutions back to XLA's Eigen
kernels (YNNPACK keeps the matmuls) halves the step time; see
docs/benchmarks.md for the measurement. XLA reads ``XLA_FLAGS`` once, when it
creates its first backend, so :func:`configure` must run before anything asks
JAX for a device.

The flag is experimental and a jaxlib that does not know it aborts the process
on start, so it is first tried in a short child process, once per jaxlib
version (the answer is kept in a small cache file), and never when JAX will
run on a GPU or TPU, where the flag does nothing. It is never added when
``XLA_FLAGS`` already sets it (your choice wins).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
CPU_TUNING = f"--{FLAG_NAME}=individual_dot"
CACHE_FILE = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
    "optax_rmsprop_examples",
    "xla_cpu_flags.json",
)
ACCELERATOR_PACKAGES = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")


def _runs_on_cpu() -> bool:
    """Whether JAX's default backend will be the CPU, decided without starting JAX."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    installed = (d.metadata["Name"] or "" for d in importlib.metadata.distributions())
    return not any(name.lower().startswith(ACCELERATOR_PACKAGES) for name in installed)


def _jaxlib_version() -> str:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _accepted(flag: str) -> bool:
    """Whether this jaxlib starts its CPU backend with ``flag``: probed once, then cached."""
    key = f"{_jaxlib_version()} {flag}"
    try:
        with open(CACHE_FILE) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
        probe = [sys.executable, "-c", "import jax; jax.devices('cpu')"]
        try:
            run = subprocess.run(probe, env=env, capture_output=True, timeout=120)
            cache[key] = run.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False  # not cached: a slow machine may answer next time
        try:
            os.makedirs(os.path.dirname(CACHE_FILE), exist_ok=True)
            with open(CACHE_FILE, "w") as f:
                json.dump(cache, f, indent=1)
        except OSError:
            pass  # a read-only home: probe again next run
    return cache[key]


def configure(enable: bool = True) -> str | None:
    """Adds the trainer's XLA:CPU flag to ``XLA_FLAGS`` when it is safe and useful.

    Args:
      enable: False leaves ``XLA_FLAGS`` alone (``--no-cpu-tuning``).

    Returns:
      The flag that was added, or None when nothing was changed: tuning
      disabled, the flag already set by the user, JAX running on a GPU or TPU
      (where the flag does nothing), or a jaxlib that rejects it.
    """
    current = os.environ.get("XLA_FLAGS", "")
    if not enable or FLAG_NAME in current or not _runs_on_cpu():
        return None
    if not _accepted(CPU_TUNING):
        return None
    os.environ["XLA_FLAGS"] = f"{current} {CPU_TUNING}".strip()
    return CPU_TUNING
