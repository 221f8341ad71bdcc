"""Orbax checkpoints, and what a rerun in a workdir does with the run already there.

A rerun never deletes a run it was not asked to: with the same settings it
continues (or reports) the run, with other settings it refuses, and only
``--overwrite`` removes the old run. A damaged newest checkpoint (a write cut
off by a crash, a bad disk) is moved to ``WORKDIR/damaged_checkpoints/`` with a
warning naming its step, and the run continues from the newest one that restores.
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

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
DAMAGED = "damaged_checkpoints"
# Everything a run writes in its workdir: what --overwrite deletes.
RUN_FILES = (CONFIG, CHECKPOINTS, DAMAGED, *reporting.OUTPUTS)


class CheckpointError(RuntimeError):
    """The run in the workdir cannot be continued; the message says why and what to do."""


def barrier(name: str) -> None:
    """All processes wait here for each other (nothing to wait for with one)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class Checkpoints:
    """The run's orbax checkpoints in ``WORKDIR/checkpoints/STEP``; the newest two are kept."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINTS))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=2, enable_async_checkpointing=False, create=True
        )
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
                f"checkpoint {step} in {self.directory} cannot be restored into this "
                f"model and optimizer: {type(err).__name__}: {str(err)[:300]}. It is "
                f"corrupt or from an incompatible run: pass another --workdir, or "
                f"--overwrite to delete that run."
            ) from err

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def restore_newest_good(self, target: Any, log: Callable[[str], None]) -> tuple[int, Any]:
        """The newest checkpoint that restores into ``target``, and its step.

        Newer ones that fail are moved to ``WORKDIR/damaged_checkpoints/`` (so
        that the run can write those steps again), each with a warning naming
        its step. When none restores, nothing is moved and the newest one's
        :class:`CheckpointError` is raised.
        """
        failed: list[tuple[int, CheckpointError]] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                tree = self.restore(step, target)
            except CheckpointError as err:
                failed.append((step, err))
                continue
            for bad, err in failed:
                log(
                    f"Warning: the checkpoint at step {bad} is damaged ({err.__cause__!r:.200}); "
                    f"moved it to {self._set_aside(bad)} and resuming from the previous good "
                    f"one, step {step}."
                )
            if failed:
                barrier("damaged checkpoints set aside")
                self._manager.reload()
            return step, tree
        raise failed[0][1]

    def _set_aside(self, step: int) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        destination = os.path.join(self.workdir, DAMAGED, f"{step}-{stamp}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            os.rename(self.step_path(step), destination)
        return destination

    def close(self) -> None:
        self._manager.close()


def open_run(
    config: dict, run_defining: tuple[str, ...], target: Any, log: Callable[[str], None] = print
) -> tuple[Checkpoints, int, Any | None]:
    """The checkpoints of the run in ``config['workdir']``, the step to continue from and its tree.

    A workdir without a run starts one. A run there with the same
    ``run_defining`` settings is continued from its newest good checkpoint,
    restored into ``target``'s structure (step 0 and None when it has none). A
    run with other settings raises :class:`CheckpointError`, unless
    ``config['overwrite']``, which deletes any run there first. Either way
    ``config.json`` then records this run's settings.
    """
    workdir = config["workdir"]
    saved = read_config(workdir)
    if saved is not None and config["overwrite"]:
        barrier("read the old run's settings")
        if jax.process_index() == 0:
            removed = remove_run(workdir)
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
    diff = {k: (saved.get(k), config[k]) for k in keys if _norm(saved.get(k)) != _norm(config[k])}
    if diff:
        detail = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"{workdir} holds a run with other settings ({detail}). To keep it, pass another "
            f"--workdir; to delete it and start afresh, pass --overwrite."
        )


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def remove_run(workdir: str) -> list[str]:
    """Deletes what a run wrote in ``workdir`` (nothing else); the names deleted."""
    removed = [name for name in RUN_FILES if os.path.lexists(os.path.join(workdir, name))]
    for name in removed:
        path = os.path.join(workdir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return removed
