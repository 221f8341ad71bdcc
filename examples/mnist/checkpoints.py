"""Checkpoints with orbax: save every N steps and at the end, resume from the latest."""

from __future__ import annotations

import json
import os
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
