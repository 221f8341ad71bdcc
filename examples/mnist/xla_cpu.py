"""XLA:CPU tuning for the trainer, applied to ``XLA_FLAGS`` before JAX creates its backends.

From jaxlib 0.10 XLA:CPU hands convolutions to YNNPACK, whose backward pass is
slow on this CNN; sending them back to XLA's Eigen kernels (YNNPACK keeps the
matmuls) trains it 1.4x faster on a 2-core CPU (docs/benchmarks.md). The flag
is experimental and a jaxlib that does not know it (0.7.2 does not) aborts at
start, so it is added only for the jaxlib versions it was measured on and
later, only when JAX will run on the CPU, and never over a value already in
``XLA_FLAGS``. It is decided from installed package metadata alone: no child
process, nothing written anywhere.
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
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def configure(enable: bool = True) -> str | None:
    """Adds the trainer's XLA:CPU flag to ``XLA_FLAGS``; returns it, or None if nothing changed.

    Nothing changes with ``enable=False`` (``--no-cpu-tuning``), when
    ``XLA_FLAGS`` already sets the flag, when JAX will run on a GPU or TPU
    (where it does nothing), or with a jaxlib older than ``FIRST_JAXLIB``.
    """
    current = os.environ.get("XLA_FLAGS", "")
    if not enable or FLAG_NAME in current or jaxlib_version() < FIRST_JAXLIB:
        return None
    if not runs_on_cpu():
        return None
    os.environ["XLA_FLAGS"] = f"{current} {CPU_TUNING}".strip()
    return CPU_TUNING
