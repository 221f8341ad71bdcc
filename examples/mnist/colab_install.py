"""``python -m examples.mnist.colab_install [--dry-run]``: ``pip install -e .[examples]`` with
jax, jaxlib, libtpu, flax and optax pinned to the installed versions (Colab's TPU runtime
pairs its jaxlib with its libtpu): pip keeps them or fails naming the conflict."""

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
    installed = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}
    return {name: installed[name] for name in names if name in installed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the pins and the command")
    args = parser.parse_args(argv)
    pins = installed_versions()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.writelines(f"{name}=={version}\n" for name, version in pins.items())
    command = [sys.executable, "-m", "pip", "install", "-q", "-e", f"{ROOT}[examples]"]
    command += ["-c", f.name]
    print("keeping " + (", ".join(f"{n} {v}" for n, v in pins.items()) or "nothing"))
    try:
        if args.dry_run:
            print(" ".join(command))
            return 0
        return subprocess.run(command).returncode
    finally:
        os.unlink(f.name)


if __name__ == "__main__":
    sys.exit(main())
