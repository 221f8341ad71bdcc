"""Running the trainer in a subprocess, as a user would, for the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SAMPLE = os.path.join(ROOT, "examples", "mnist", "data")
SHARED_MNIST = os.path.normpath(os.path.join(ROOT, "..", "shared", "datasets", "mnist"))


# One JAX compilation cache for the trainer runs of this test process: a run that
# resumes, or repeats a configuration, loads its programs instead of compiling them
# again (the runs compare results, which a cached program does not change).
_COMPILATION_CACHE = tempfile.TemporaryDirectory(prefix="jax-cache-")


def env(devices: int = 1) -> dict:
    e = dict(os.environ)
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e["PYTHONPATH"] = ROOT
    e.pop("JAX_ENABLE_X64", None)
    e["JAX_COMPILATION_CACHE_DIR"] = _COMPILATION_CACHE.name
    e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    e["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
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


def start_and_wait_for_checkpoint(
    *flags: str, workdir: str, min_step: int, timeout: float = 300
) -> subprocess.Popen:
    """Starts the trainer and stops it (SIGSTOP) once it has a checkpoint at ``min_step`` or later.

    The process is alive but paused then, so a fast machine cannot finish the run before the
    caller signals it (SIGKILL, or SIGTERM then SIGCONT); its stderr is a pipe.
    """
    proc = subprocess.Popen(
        trainer_command(*flags, "--workdir", workdir),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpts = os.path.join(workdir, "checkpoints")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        steps = [int(d) for d in os.listdir(ckpts) if d.isdigit()] if os.path.isdir(ckpts) else []
        if steps and max(steps) >= min_step:
            proc.send_signal(signal.SIGSTOP)
            return proc
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(
        f"the run ended or stalled before step {min_step}: {proc.communicate()[1]}"
    )


def restore(path: str):
    """The arrays of the orbax checkpoint at ``path`` (a step directory)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.join(os.path.abspath(path), "default"))
