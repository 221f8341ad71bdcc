"""Checkpoints with orbax: save every N steps and at the end; resume, or start afresh."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import orbax.checkpoint as ocp

CONFIG = "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used to resume this run; the message says why."""


class Checkpoints:
    def __init__(self, workdir: str):
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
    settings (else :class:`CheckpointError`) and its latest checkpoint is
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
            restored = ckpt.restore(latest, target)
            log(f"Resumed from the checkpoint at step {latest}.")
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
