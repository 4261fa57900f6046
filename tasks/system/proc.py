"""Child processes that never outlive the step that started them.

Each child runs in a session of its own, so a Ctrl-C at the terminal reaches
only our Python process, which then stops the child's whole process group in
an orderly way (SIGTERM, a grace period, SIGKILL). If our process dies
without that chance, the kernel kills the child (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tasks.errors import StageFailed

_PR_SET_PDEATHSIG = 1
# How much of a failed command's output its error shows.
OUTPUT_LINES = 5
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def forked_children_stop_with_parent() -> None:
    """Every process forked from here on receives SIGTERM when its parent dies.

    doit -n N forks its worker processes from its main process. Killed
    outright, the main process would leave them running their stage (a build
    holding a loop device and mounts) or waiting for work forever; with this,
    they stop through the same SIGTERM handling as a cancelled run.
    """
    parent = {}

    def before() -> None:
        parent["pid"] = os.getpid()

    def in_child() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent.get("pid"):  # it died before we asked
            os.kill(os.getpid(), signal.SIGTERM)

    os.register_at_fork(before=before, after_in_child=in_child)


class CommandFailed(StageFailed):
    """A command a stage needed failed: the command, its status and the end of its output."""

    def __init__(self, cmd: Sequence[str], returncode: int, output: str = ""):
        self.cmd = list(cmd)
        self.returncode = returncode
        self.output = output
        lines = [line for line in output.strip().splitlines() if line.strip()][-OUTPUT_LINES:]
        message = f"{' '.join(self.cmd)} exited with status {returncode}"
        super().__init__("\n  ".join([message + (":" if lines else ""), *lines]))

    def __reduce__(self):
        return (type(self), (self.cmd, self.returncode, self.output))

    @property
    def last_line(self) -> str:
        """The failure in one line: the output's last, or the exit status when there was none."""
        lines = [line for line in self.output.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {self.returncode}"


# The children started here and not yet stopped, for signal_running().
_running: set[subprocess.Popen] = set()


def start(cmd: Sequence[str], **popen_args) -> subprocess.Popen:
    try:
        child = subprocess.Popen(list(cmd), start_new_session=True, preexec_fn=_die_with_parent, **popen_args)
    except FileNotFoundError as missing:
        if missing.filename not in (cmd[0], None):
            raise  # a missing working directory or the like: a bug
        raise StageFailed(f"{cmd[0]} not found: tools/setup-host installs what the stages run") from None
    _running.add(child)
    return child


# The signal that told this process to stop (dodo.py's handler of SIGINT and SIGTERM).
_stop_signal: list[int] = []


def note_stop(sig: int) -> bool:
    """Note that sig tells this process to stop; True for the first such signal only
    (a later one finds the stop under way)."""
    first = not _stop_signal
    if first:
        _stop_signal.append(sig)
    return first


def stop_requested() -> bool:
    """Whether a signal has told this process to stop (note_stop)."""
    return bool(_stop_signal)


def signal_running(sig: int) -> None:
    """Send sig to the process group of every child still running.

    Called from the SIGTERM handler: the child stops even if the
    KeyboardInterrupt raised after it never reaches the code that started it.
    """
    for child in list(_running):
        if child.returncode is None:
            _kill_group(child.pid, sig)


def reap(child: subprocess.Popen, timeout: float | None = None) -> bool:
    """Wait until child has exited (at most timeout seconds); True once it has.

    It calls waitpid itself rather than Popen.wait: a signal whose handler
    raises (our SIGTERM and SIGINT handlers do) can land between Popen taking
    its internal wait lock and the block that releases it, and every later
    Popen.wait then blocks for ever on a child long dead (seen: a zombie
    sandbox, its build's loop device never detached).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while child.returncode is None:
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:
            if child.returncode is None:  # reaped by Popen meanwhile, which has its status
                child.poll()
            if child.returncode is None:
                child.returncode = -1  # reaped, status unknown
            return True
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def stop(child: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a child and everything in its process group; wait until it is gone."""
    _running.discard(child)
    if not reap(child, 0):
        _kill_group(child.pid, signal.SIGTERM)
        reap(child, grace)
    _kill_group(child.pid, signal.SIGKILL)  # what is left in its group
    reap(child)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def run(cmd: Sequence[str], **kwargs) -> str:
    """Run a short command, return its standard output; raise CommandFailed."""
    child = start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    try:
        out, err = child.communicate()
    finally:
        stop(child)
    if child.returncode != 0:
        raise CommandFailed(cmd, child.returncode, err or out)
    return out


def run_logged(
    cmd: Sequence[str],
    log: Path,
    on_line: Callable[[str], None] | None = None,
    **kwargs,
) -> int:
    """Run a long command, appending its combined output to log line by line.

    on_line sees every line (for progress). Returns the exit status; the child
    is stopped on any exception, KeyboardInterrupt included.
    """
    with open(log, "ab") as sink:
        child = start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)
        assert child.stdout is not None  # stdout=PIPE
        try:
            for raw in child.stdout:
                sink.write(raw)
                if on_line:
                    on_line(raw.decode(errors="replace").rstrip("\n"))
            sink.flush()
            reap(child)
            return child.returncode
        finally:
            child.stdout.close()
            stop(child)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
