"""Stopping a run cleanly on SIGTERM (preemption) or Ctrl-C, on every process at one step.

A preemptible TPU VM, a Colab runtime being reclaimed and cluster schedulers
send SIGTERM, then kill the process after a grace period (often 30 s). The
trainer asks :meth:`StopSignal.reached` at each dispatch boundary whether to
stop there; when it says so, the trainer saves a checkpoint at the step it
reached and exits.

* One process: a Python handler records the first SIGTERM or SIGINT (Ctrl-C,
  or a notebook's *interrupt*) and puts back the default handler, so a second
  one stops the process at once, as users expect.
* Several processes (``jax.distributed``): every process must stop at the same
  step, so the decision is JAX's preemption sync
  (``jax.experimental.multihost_utils.reached_preemption_sync_point``, which
  orbax's ``CheckpointManager.reached_preemption`` wraps). JAX's coordination
  service listens for SIGTERM itself; once any process gets one, the service
  agrees on the dispatch after the furthest process's, and ``reached`` is true
  there on all of them. Ctrl-C is passed on as SIGTERM to the same protocol.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """Context manager: while open, SIGTERM and SIGINT ask the run to stop at a boundary.

    Call :meth:`reached` once per dispatch, with a counter that goes up by one
    per dispatch (the same on every process: JAX's sync point is "the next
    call after the furthest process's").
    """

    def __init__(self) -> None:
        self.received: str | None = None  # the name of the signal that asked to stop
        self._multiprocess = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        self._multiprocess = jax.process_count() > 1
        if threading.current_thread() is not threading.main_thread():
            return self  # Python only lets the main thread handle signals
        # With several processes JAX's own SIGTERM listener must stay in place.
        ours = (signal.SIGINT,) if self._multiprocess else SIGNALS
        for signum in ours:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name
        # A second signal of the same kind acts at once (Ctrl-C twice stops now).
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        if self._multiprocess:  # hand Ctrl-C to JAX's preemption sync as a notice
            os.kill(os.getpid(), signal.SIGTERM)

    def reached(self, dispatch: int) -> bool:
        """Whether the run should stop after dispatch number ``dispatch`` (1, 2, ...)."""
        if not self._multiprocess:
            return self.received is not None
        try:
            return multihost_utils.reached_preemption_sync_point(dispatch)
        except RuntimeError:  # the preemption service is turned off (jax config)
            return False

    def name(self) -> str:
        """What asked the run to stop, for the message."""
        if self.received:
            return self.received
        return "a preemption notice (SIGTERM to one of the processes)"

    def exit_code(self) -> int:
        """The shell's code for death by the signal: 143 for SIGTERM, 130 for SIGINT."""
        signum = signal.Signals[self.received] if self.received else signal.SIGTERM
        return 128 + int(signum)
