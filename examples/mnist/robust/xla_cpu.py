"""XLA:CPU tuning, set in ``XLA_FLAGS`` before JAX creates its backends (docs/mnist.md).

Convolutions back on Eigen from YNNPACK: the CNN trains faster on CPU, by the factor that
``benchmarks/results/trainer_throughput.md`` measures (its first two rows). A jaxlib that
does not know the flag (0.7.2) aborts, so it is decided from package metadata alone (no
child process, no file): from jaxlib 0.10, on CPU, if not set already.
"""

from __future__ import annotations

import importlib.metadata
import os

FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
CPU_TUNING = f"--{FLAG_NAME}=individual_dot"
FIRST_JAXLIB = (0, 10)  # the first jaxlib it was measured on; 0.7.2 rejects the flag
ACCELERATOR_PACKAGES = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")


def runs_on_cpu() -> bool:
    """Whether JAX's default backend will be the CPU, decided without starting JAX."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    installed = (d.metadata["Name"] or "" for d in importlib.metadata.distributions())
    return not any(name.lower().startswith(ACCELERATOR_PACKAGES) for name in installed)


def jaxlib_version() -> tuple[int, ...]:
    installed = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()}
    return tuple(int(part) for part in installed.get("jaxlib", "0").split(".")[:2])


def configure(enable: bool = True) -> str | None:
    """Adds the flag to ``XLA_FLAGS`` and returns it; None if disabled, set already, or unfit."""
    current = os.environ.get("XLA_FLAGS", "")
    if not enable or FLAG_NAME in current or jaxlib_version() < FIRST_JAXLIB or not runs_on_cpu():
        return None
    os.environ["XLA_FLAGS"] = f"{current} {CPU_TUNING}".strip()
    return CPU_TUNING
