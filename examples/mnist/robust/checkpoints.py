"""Orbax checkpoints, and what a rerun does with the run in its workdir.

With the same settings a rerun continues the run (or reports it, finished); with other
settings it refuses, and only ``--overwrite`` deletes it. A damaged newest checkpoint
gives way to the previous one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from examples.mnist import reporting
from examples.mnist.config import RUN_DEFINING, Config

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
DAMAGED = "damaged_checkpoints"
RUN_FILES = (CONFIG, CHECKPOINTS, DAMAGED, *reporting.OUTPUTS)  # what --overwrite deletes


class CheckpointError(RuntimeError):
    """The run in the workdir cannot be continued; the message says why and what to do."""


class DamagedCheckpoint(CheckpointError):
    """The checkpoint at ``step`` does not restore into this model and optimizer."""

    def __init__(self, step: int, directory: str, cause: Exception):
        self.step = step
        super().__init__(
            f"checkpoint {step} in {directory} cannot be restored into this model and "
            f"optimizer: {type(cause).__name__}: {str(cause)[:300]}. It is corrupt or from an "
            f"incompatible run: pass another --workdir, or --overwrite to delete that run."
        )


def barrier(name: str) -> None:
    """Waits until every process gets here (a no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def checkpoint_due(previous: int, step: int, every: int, last_step: int) -> bool:
    """At the last step, and when the steps since ``previous`` crossed a multiple of ``every``."""
    return step == last_step or (bool(every) and previous // every != step // every)


def checkpoint_tree(objects: Any, step: int) -> dict:
    """What a checkpoint holds: the state of the nnx ``objects``, and the step."""
    return {"state": nnx.to_pure_dict(nnx.state(objects)), "step": np.asarray(step, np.int64)}


class Checkpoints:
    """The run's orbax checkpoints in ``WORKDIR/checkpoints/STEP``; the newest two are kept.

    :func:`open_run` makes one; ``step`` is where the run continues from. Closed as a
    context manager.
    """

    def __init__(self, workdir: str, every: int, last_step: int):
        self.workdir = workdir
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINTS))
        self.every = every  # steps between checkpoints; 0: only at the last step
        self.last_step = last_step
        self.step = 0
        options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self._manager.close()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, objects: Any) -> str:
        """Saves the nnx ``objects`` at ``step`` unless saved already; returns where."""
        if step not in self._manager.all_steps():
            tree = checkpoint_tree(objects, step)
            self._manager.save(step, args=ocp.args.StandardSave(tree))
            self._manager.wait_until_finished()
        return self.step_path(step)

    def save_if_due(self, previous: int, step: int, objects: Any) -> None:
        """After the steps from ``previous`` to ``step``: saves if :func:`checkpoint_due`."""
        if checkpoint_due(previous, step, self.every, self.last_step):
            self.save(step, objects)

    def restore(self, step: int, target: dict) -> dict:
        """Restores ``step`` into the structure, shapes and shardings of ``target``."""
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as err:  # orbax raises many types for a bad checkpoint
            raise DamagedCheckpoint(step, self.directory, err) from err

    def restore_newest_good(self, objects: Any, log: Callable[[str], None]) -> int:
        """Restores the newest checkpoint that fits into the nnx ``objects``; returns its step.

        Newer ones move to ``damaged_checkpoints/`` (the run writes those steps again), each
        with a warning.
        """
        target = checkpoint_tree(objects, 0)
        failed: list[DamagedCheckpoint] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                tree = self.restore(step, target)
            except DamagedCheckpoint as err:
                failed.append(err)
                continue
            for err in failed:
                self._set_aside(err, good_step=step, log=log)
            if failed:
                barrier("damaged checkpoints set aside")
                self._manager.reload()
            state = nnx.state(objects)
            nnx.replace_by_pure_dict(state, tree["state"])
            nnx.update(objects, state)
            return step
        raise failed[0]

    def _set_aside(self, err: DamagedCheckpoint, good_step: int, log: Callable[[str], None]):
        """Moves the damaged checkpoint of ``err`` to ``damaged_checkpoints/``, saying so."""
        bad = err.step
        moved = os.path.join(self.workdir, DAMAGED, f"{bad}-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(moved), exist_ok=True)
            os.rename(self.step_path(bad), moved)
        log(
            f"Warning: the checkpoint at step {bad} is damaged ({err.__cause__!r:.200}); "
            f"moved it to {moved} and resuming from the previous good one, step {good_step}."
        )


def open_run(
    config: Config, objects: Any, last_step: int, log: Callable[[str], None] = print
) -> Checkpoints:
    """The checkpoints of the run in ``config.workdir``, its newest good one restored.

    Restores into the nnx ``objects`` and sets ``step`` (0 for a new run). A run there with
    other run-defining settings raises :class:`CheckpointError`; ``config.overwrite``
    deletes it first.
    """
    saved = read_config(config.workdir)
    if saved is not None and config.overwrite:
        delete_run(config.workdir, log)
    elif saved is not None:
        refuse_other_settings(config.workdir, saved, config.to_dict(), RUN_DEFINING)
    barrier("workdir ready")
    ckpt = Checkpoints(config.workdir, config.checkpoint_every, last_step)
    if ckpt.latest_step() is not None:
        ckpt.step = ckpt.restore_newest_good(objects, log)
        log(f"Resumed from the checkpoint at step {ckpt.step}.")
    elif config.resume:
        log(f"--resume: no checkpoint in {ckpt.directory}; starting from step 0.")
    if jax.process_index() == 0:
        with open(os.path.join(config.workdir, CONFIG), "w") as f:
            json.dump(config.to_dict(), f, indent=2)
    return ckpt


def delete_run(workdir: str, log: Callable[[str], None]) -> None:
    """``--overwrite``: deletes what a run wrote in ``workdir``."""
    barrier("read the old run's settings")
    if jax.process_index() != 0:
        return
    removed = [name for name in RUN_FILES if os.path.lexists(os.path.join(workdir, name))]
    for path in (os.path.join(workdir, name) for name in removed):
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    log(f"--overwrite: deleted the previous run in {workdir} ({', '.join(removed)}).")


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
