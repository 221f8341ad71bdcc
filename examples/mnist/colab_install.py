"""Installs this repository's example dependencies without touching the runtime's JAX.

    python -m examples.mnist.colab_install [--dry-run]

Colab's TPU runtime pairs its jaxlib with its libtpu: a pip install that
upgrades jax, jaxlib, flax or optax there breaks the TPU. This runs
``pip install -e .[examples]`` with a constraints file that pins whichever of
those packages are already installed to their installed versions, so pip
either keeps them or fails with a message naming the conflict. The Colab
notebook calls it; the tests check that it leaves the versions alone.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import tempfile

PINNED = ("jax", "jaxlib", "libtpu", "flax", "optax")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def installed_versions(names: tuple[str, ...] = PINNED) -> dict[str, str]:
    """``{name: version}`` of the packages among ``names`` that are installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def install_command(constraints_path: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "-e",
        f"{ROOT}[examples]",
        "-c",
        constraints_path,
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the pins and the command only")
    args = ap.parse_args(argv)
    pins = installed_versions()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("".join(f"{name}=={version}\n" for name, version in pins.items()))
    command = install_command(f.name)
    print("keeping " + ", ".join(f"{n} {v}" for n, v in pins.items()) or "nothing to keep")
    if args.dry_run:
        print(" ".join(command))
        return 0
    try:
        return subprocess.run(command).returncode
    finally:
        os.unlink(f.name)


if __name__ == "__main__":
    sys.exit(main())
