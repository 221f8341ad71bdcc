"""Checkpoints with orbax: save every N steps and at the end; resume, or start afresh.

A damaged newest checkpoint (a write cut off by a crash, a bad disk) does not
end the run's life: ``--resume`` warns, naming its step, moves it to
``WORKDIR/damaged_checkpoints/`` and resumes from the newest one that restores.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

CONFIG = "config.json"
DAMAGED = "damaged_checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used to resume this run; the message says why."""


class Checkpoints:
    """The run's orbax checkpoints in ``WORKDIR/checkpoints/STEP``; the newest two are kept."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=2, enable_async_checkpointing=False, create=True
            ),
        )

    def clear(self) -> int:
        """Deletes every checkpoint (a new run replaces the old one); returns how many."""
        steps = list(self._manager.all_steps())
        for step in steps:
            self._manager.delete(step)
        return len(steps)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, tree: Any) -> None:
        if step in self._manager.all_steps():
            return
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
                f"corrupt or from an incompatible run: delete it or use a new --workdir."
            ) from err

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def restore_newest_good(
        self, target: Any, main_process: bool, log: Callable[[str], None]
    ) -> tuple[int, Any]:
        """The newest checkpoint that restores into ``target``, and its step.

        Newer ones that fail are moved to ``WORKDIR/damaged_checkpoints/``
        (so that the run can write those steps again), each with a warning
        naming its step. When none restores, nothing is moved and the newest
        one's :class:`CheckpointError` is raised.
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
                    f"moved it to {self._set_aside(bad, main_process)} and resuming from "
                    f"the previous good one, step {step}."
                )
            if failed:
                multihost_utils.sync_global_devices("damaged checkpoints set aside")
                self._manager.reload()
            return step, tree
        raise failed[0][1]

    def _set_aside(self, step: int, main_process: bool) -> str:
        destination = os.path.join(
            self.workdir, DAMAGED, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        if main_process:
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            os.rename(self.step_path(step), destination)
        return destination

    def close(self) -> None:
        self._manager.close()


def open_run(
    workdir: str,
    config: dict,
    resumable: tuple[str, ...],
    *,
    resume: bool,
    target: Any,
    main_process: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[Checkpoints, Any | None]:
    """The checkpoints of the run in ``workdir``, and the tree to resume from (or None).

    With ``resume``, the run must have been started with the same ``resumable``
    settings (else :class:`CheckpointError`) and its newest good checkpoint is
    restored into ``target``'s structure; with none there, training starts
    from step 0. Without it, this is a new run: the checkpoints of a previous
    run in ``workdir`` are removed, so that they cannot be mixed with this
    one's. Either way ``config.json`` then records this run's settings.
    """
    ckpt = Checkpoints(workdir)
    restored = None
    latest = ckpt.latest_step()
    if resume:
        check_config(workdir, config, resumable)
        if latest is None:
            log(f"--resume: no checkpoint in {ckpt.directory}; starting from step 0.")
        else:
            step, restored = ckpt.restore_newest_good(target, main_process, log)
            log(f"Resumed from the checkpoint at step {step}.")
    elif main_process and latest is not None:
        removed = ckpt.clear()
        log(
            f"New run in {workdir}: removed {removed} checkpoint(s) of the previous run "
            "(pass --resume to continue a run instead)."
        )
    if main_process:
        write_config(workdir, config)
    return ckpt, restored


def check_config(workdir: str, config: dict, keys: tuple[str, ...]) -> None:
    """Raises CheckpointError if the run in ``workdir`` was started with other settings."""
    path = os.path.join(workdir, CONFIG)
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is unreadable: {err}") from err
    diff = {k: (saved.get(k), config[k]) for k in keys if _norm(saved.get(k)) != _norm(config[k])}
    if diff:
        detail = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"--resume: the run in {workdir} used other settings ({detail}). Resume "
            f"with the same flags, or start a new run in another --workdir."
        )


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def write_config(workdir: str, config: dict) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG), "w") as f:
        json.dump(config, f, indent=2)
