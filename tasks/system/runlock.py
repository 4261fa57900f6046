"""One doit run at a time in a work directory.

Two runs in one work directory would build a cell into the same staging
directory, each removing what the other made, and each would write doit's
state file from its own view. The second run stops at once and names the
first. Commands that only read (doit list, info, help, verify: dodo.py decides
through tasks/cmdline.py) take no lock, so they work while a run goes on.

The lock is an flock on <workdir>/.run.lock, held by the open file for as long
as the doit process lives (its forked workers share it): the kernel releases
it when the run ends, however it ends, so a killed run never leaves it stale.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = ".run.lock"

_held: list[int] = []  # open lock files, kept open until the process ends


class WorkdirBusy(Exception):
    pass


def hold(workdir: Path) -> None:
    """Take the work directory for this process, or raise WorkdirBusy naming the holder."""
    fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise WorkdirBusy(
            f"{workdir} is in use by another doit run (pid {holder}): "
            "wait for it to finish, or give this run its own workdir="
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held.append(fd)
