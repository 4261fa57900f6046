"""Sharing the machine's cores between stages that run in parallel.

With `doit -n N`, builds (about one core each), compressions (xz, qemu-img:
as many threads as they are given) and boot tests (one qemu thread per
virtual CPU) run side by side. Each stage takes CPU slots before it starts
its work: one slot per core, held as an fcntl lock on a file of the work
directory, so the slots are shared by every doit worker and released by the
kernel when a process ends, however it ends. A stage that can use several
threads takes every free slot (at least one, waiting for it if need be) and
sizes its threads to what it got: the cores stay busy, and no more threads
run than there are cores.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

POLL_SECONDS = 0.5


def cores() -> int:
    return len(os.sched_getaffinity(0))


@contextlib.contextmanager
def slots(
    directory: Path,
    want: int,
    total: int | None = None,
    abandon: Callable[[], bool] | None = None,
    keep: Callable[[int], int] | None = None,
) -> Iterator[int]:
    """Hold between 1 and want CPU slots of directory; yield how many were got.

    abandon: asked while waiting for a first slot; when it says True, stop
    waiting and yield 0 (the work was done meanwhile by those holding slots).
    keep: given how many were got, how many to hold on to (at least 1); the
    rest go back at once, to work that starts next.
    """
    total = total or cores()
    want = max(1, min(want, total))
    directory.mkdir(parents=True, exist_ok=True)
    held: list[int] = []
    try:
        while not held:
            for i in range(total):
                if len(held) == want:
                    break
                fd = os.open(directory / f"slot-{i}", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                else:
                    held.append(fd)
            if not held:
                if abandon is not None and abandon():
                    break
                time.sleep(POLL_SECONDS)
        if keep is not None and held:
            kept = max(1, keep(len(held)))
            for fd in held[kept:]:
                os.close(fd)
            del held[kept:]
        yield len(held)
    finally:
        for fd in held:
            os.close(fd)  # closing releases the lock
