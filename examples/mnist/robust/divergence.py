"""Stopping a run whose loss or parameters became nan or inf, before it is checkpointed."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

import numpy as np

from examples.mnist import reporting
from examples.mnist.robust.checkpoints import Checkpoints


class Diverged(RuntimeError):
    """A loss or a parameter became nan or inf; nothing of it was checkpointed."""


class Steps(Protocol):
    """What a run of train steps reports (``train.Chunk``)."""

    losses: np.ndarray  # one per step
    params_finite: bool  # after the last step


def problem(
    steps: Steps, first_step: int, non_finite_layers: Callable[[], list[str]]
) -> str | None:
    """What went non-finite in ``steps``, run after ``first_step`` steps, or None.

    Args:
      steps: the train loss of each step, and whether the parameters were finite after them.
      first_step: the number of steps run before these.
      non_finite_layers: the names of the parameters that hold a nan or an inf.

    Returns:
      A phrase naming the step and the quantity, or None if all is finite.
    """
    bad = np.flatnonzero(~np.isfinite(steps.losses))
    if bad.size:
        return f"at step {first_step + bad[0] + 1} the train loss is {steps.losses[bad[0]]}"
    if not steps.params_finite:
        layers = ", ".join(non_finite_layers())
        return f"after step {first_step + len(steps.losses)} parameters are not finite ({layers})"
    return None


def check_steps(
    steps: Steps, first_step: int, non_finite_layers: Callable[[], list[str]], ckpt: Checkpoints
) -> None:
    """Raises :class:`Diverged` if anything went non-finite in ``steps`` (see :func:`problem`)."""
    stop_if_diverged(problem(steps, first_step, non_finite_layers), ckpt)


def stop_if_diverged(problem: str | None, ckpt: Checkpoints) -> None:
    """Raises :class:`Diverged` naming ``problem`` and the last good checkpoint, if any problem."""
    if problem is None:
        return
    last = ckpt.latest_step()
    good = f"the last good checkpoint is step {last} ({ckpt.step_path(last)})"
    raise Diverged(
        f"Diverged: {problem}. Training stopped and nothing non-finite was checkpointed; "
        f"{good if last is not None else 'no checkpoint was written before it'}. Metrics so "
        f"far are in {os.path.join(ckpt.workdir, reporting.METRICS)}. Try a smaller "
        "--learning-rate or a larger --eps."
    )


def check_test_loss(record: dict, ckpt: Checkpoints) -> None:
    """Raises :class:`Diverged` if the evaluation ``record``'s test loss is not finite."""
    loss = record["test_loss"]
    if not np.isfinite(loss):
        stop_if_diverged(f"at step {record['step']} the test loss is {loss}", ckpt)
