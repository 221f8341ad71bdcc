"""Orbax checkpoints, and what a rerun does with the run in its workdir: with the same
settings it continues (or reports) it, with other settings it refuses, and only
``--overwrite`` deletes it. A damaged newest checkpoint gives way to the previous one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from examples.mnist import reporting

CONFIG, CHECKPOINTS, DAMAGED = "config.json", "checkpoints", "damaged_checkpoints"
RUN_FILES = (CONFIG, CHECKPOINTS, DAMAGED, *reporting.OUTPUTS)  # what --overwrite deletes


class CheckpointError(RuntimeError):
    """The run in the workdir cannot be continued; the message says why and what to do."""


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class Checkpoints:
    """The run's orbax checkpoints in ``WORKDIR/checkpoints/STEP``; the newest two are kept."""

    def __init__(self, workdir: str):
        self.workdir, self.directory = workdir, os.path.abspath(os.path.join(workdir, CHECKPOINTS))
        options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, tree: Any) -> None:
        if step not in self._manager.all_steps():
            self._manager.save(step, args=ocp.args.StandardSave(tree))
            self._manager.wait_until_finished()

    def restore(self, step: int, target: Any) -> Any:
        """Restores ``step`` into the structure, shapes and shardings of ``target``."""
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as err:  # orbax raises many types for a bad checkpoint
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} cannot be restored into this model and "
                f"optimizer: {type(err).__name__}: {str(err)[:300]}. It is corrupt or from an "
                f"incompatible run: pass another --workdir, or --overwrite to delete that run."
            ) from err

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def restore_newest_good(self, target: Any, log: Callable[[str], None]) -> tuple[int, Any]:
        """The newest checkpoint that restores into ``target``, and its step; newer ones move
        to ``damaged_checkpoints/`` (the run writes those steps again), each with a warning."""
        failed: list[tuple[int, CheckpointError]] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                tree = self.restore(step, target)
            except CheckpointError as err:
                failed.append((step, err))
                continue
            for bad, err in failed:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                moved = os.path.join(self.workdir, DAMAGED, f"{bad}-{stamp}")
                if jax.process_index() == 0:
                    os.makedirs(os.path.dirname(moved), exist_ok=True)
                    os.rename(self.step_path(bad), moved)
                log(
                    f"Warning: the checkpoint at step {bad} is damaged ({err.__cause__!r:.200}); "
                    f"moved it to {moved} and resuming from the previous good one, step {step}."
                )
            if failed:
                barrier("damaged checkpoints set aside")
                self._manager.reload()
            return step, tree
        raise failed[0][1]

    def close(self) -> None:
        self._manager.close()


def open_run(
    config: dict, run_defining: tuple[str, ...], target: Any, log: Callable[[str], None] = print
) -> tuple[Checkpoints, int, Any | None]:
    """The run's checkpoints, the step it continues from and its tree restored into
    ``target`` (0 and None for a new run). Other ``run_defining`` settings there raise
    :class:`CheckpointError`; ``config['overwrite']`` deletes any run there first."""
    workdir = config["workdir"]
    saved = read_config(workdir)
    if saved is not None and config["overwrite"]:
        barrier("read the old run's settings")
        if jax.process_index() == 0:
            removed = [name for name in RUN_FILES if os.path.lexists(os.path.join(workdir, name))]
            for path in (os.path.join(workdir, name) for name in removed):
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            log(f"--overwrite: deleted the previous run in {workdir} ({', '.join(removed)}).")
    elif saved is not None:
        refuse_other_settings(workdir, saved, config, run_defining)
    barrier("workdir ready")
    ckpt, step, restored = Checkpoints(workdir), 0, None
    if ckpt.latest_step() is not None:
        step, restored = ckpt.restore_newest_good(target, log)
        log(f"Resumed from the checkpoint at step {step}.")
    elif config["resume"]:
        log(f"--resume: no checkpoint in {ckpt.directory}; starting from step 0.")
    if jax.process_index() == 0:
        with open(os.path.join(workdir, CONFIG), "w") as f:
            json.dump(config, f, indent=2)
    return ckpt, step, restored


def read_config(workdir: str) -> dict | None:
    """The settings of the run in ``workdir``: None if there is none, {} if they are unknown."""
    path = os.path.join(workdir, CONFIG)
    if not os.path.exists(path):
        return {} if os.path.isdir(os.path.join(workdir, CHECKPOINTS)) else None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def refuse_other_settings(workdir: str, saved: dict, config: dict, keys: tuple[str, ...]) -> None:
    """Raises CheckpointError if the run in ``workdir`` was started with other settings."""
    as_saved = json.loads(json.dumps(config))  # tuples as the lists config.json holds
    diff = {k: (saved.get(k), config[k]) for k in keys if saved.get(k) != as_saved[k]}
    if diff:
        detail = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"{workdir} holds a run with other settings ({detail}). To keep it, pass another "
            f"--workdir; to delete it and start afresh, pass --overwrite."
        )
