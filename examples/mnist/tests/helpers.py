"""Running the trainer in a subprocess, as a user would, for the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SAMPLE = os.path.join(ROOT, "examples", "mnist", "data")
SHARED_MNIST = os.path.normpath(os.path.join(ROOT, "..", "shared", "datasets", "mnist"))


def env(devices: int = 1) -> dict:
    e = dict(os.environ)
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e["PYTHONPATH"] = ROOT
    e.pop("JAX_ENABLE_X64", None)
    return e


def trainer_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "examples.mnist", "--no-progress", *flags]


def run_trainer(*flags: str, devices: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        trainer_command(*flags),
        cwd=ROOT,
        env=env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def metrics(workdir: str, drop=("examples_per_sec",)) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in drop} for r in records]
