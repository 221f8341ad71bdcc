"""One run per workdir: ``flock`` on ``WORKDIR/.lock``, which the kernel drops when its
holder dies (``kill -9`` too). NFS arbitrates it between machines; FUSE mounts (Drive
on Colab, gcsfuse) get local locks, which cover the runs of one machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator

LOCK_FILE = ".lock"


class WorkdirBusy(RuntimeError):
    """Another run holds the workdir; the message names it."""


@contextlib.contextmanager
def hold(workdir: str, enabled: bool = True) -> Iterator[None]:
    """Holds ``workdir``'s lock for the block (``enabled``: on the main process), or raises."""
    if not enabled:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "not yet known"
            raise WorkdirBusy(
                f"{workdir} is in use by another run ({holder}). Wait for it to end, stop it, "
                f"or pass another --workdir."
            ) from None
        command = " ".join(sys.argv) if sys.argv and sys.argv[0] else "python"
        holder = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%c')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder}: {command}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # nobody holds it now
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
