"""One run per workdir: an advisory lock that the kernel releases when its holder dies.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``WORKDIR/.lock``. The kernel
drops it when the process exits for any reason (``kill -9`` included), so a
dead run never leaves a stale lock. On NFS (Filestore on a TPU VM) Linux
implements ``flock`` with NFS byte-range locks, which the server arbitrates
between machines; FUSE mounts (Google Drive on Colab, gcsfuse) get the
kernel's local locking, which covers the runs of one machine. The holder
writes who it is into the file, so a second run can name it.
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


def _holder_line() -> str:
    command = " ".join(sys.argv) if sys.argv and sys.argv[0] else "python"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}"


@contextlib.contextmanager
def hold(workdir: str, enabled: bool = True) -> Iterator[None]:
    """Holds ``workdir``'s lock for the block; :class:`WorkdirBusy` if another run has it.

    ``enabled=False`` (the other processes of a multi-process run, which share
    the main process's workdir) does nothing.
    """
    if not enabled:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            raise WorkdirBusy(
                f"{workdir} is in use by another run ({holder or 'holder not yet recorded'}). "
                f"Wait for it to end, stop it, or pass another --workdir."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_line().encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # nobody holds it now
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
