"""Stopping cleanly on SIGTERM (preemption) or Ctrl-C, on every process at the same step.

With one process a handler notes the first signal (a second acts at once); with several,
JAX's coordination service catches SIGTERM and its preemption sync point decides.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

import jax
from jax.experimental import multihost_utils

from examples.mnist.robust.checkpoints import Checkpoints


class StopSignal:
    """Context manager: while open, SIGTERM and SIGINT ask the run to stop at a boundary."""

    def __init__(self) -> None:
        self.received: str | None = None  # the name of the signal that asked to stop
        self._multiprocess = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        self._multiprocess = jax.process_count() > 1
        if threading.current_thread() is threading.main_thread():  # only it may handle signals
            # With several processes JAX's own SIGTERM listener must stay in place.
            ours = [signal.SIGINT] + ([] if self._multiprocess else [signal.SIGTERM])
            self._previous = {signum: signal.signal(signum, self._handle) for signum in ours}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        if self._multiprocess:  # hand Ctrl-C to JAX's preemption sync as a notice
            os.kill(os.getpid(), signal.SIGTERM)

    def stop_if_asked(self, dispatch: int, step: int, ckpt: Checkpoints, objects: Any) -> None:
        """After dispatch number ``dispatch`` (1, 2, ..., the same on every process): if asked
        to stop before the last step, saves the nnx ``objects`` and raises :class:`Preempted`."""
        if self.reached(dispatch) and step < ckpt.last_step:
            raise Preempted(self, step, ckpt.last_step, ckpt.save(step, objects))

    def reached(self, dispatch: int) -> bool:
        """Whether to stop after dispatch number ``dispatch`` (1, 2, ..., same on all processes)."""
        if not self._multiprocess:
            return self.received is not None
        try:
            return multihost_utils.reached_preemption_sync_point(dispatch)
        except RuntimeError:  # the preemption service is turned off (jax config)
            return False

    def exit_code(self) -> int:
        """The shell's code for death by the signal: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + int(signal.Signals[self.received or "SIGTERM"])


class Preempted(RuntimeError):
    """SIGTERM or Ctrl-C: the run saved a checkpoint at ``step``; a rerun continues it."""

    def __init__(self, stop: StopSignal, step: int, last_step: int, checkpoint: str):
        name = stop.received or "a preemption notice (SIGTERM to one of the processes)"
        self.where = f"Stopped by {name} at step {step} of {last_step}; checkpoint "
        self.where += f"saved in {checkpoint}."
        super().__init__(f"{self.where} Run again with the same settings to continue.")
        self.exit_code = stop.exit_code()
