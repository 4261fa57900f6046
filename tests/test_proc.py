"""tasks/system/proc.py: children stop, and are waited for, whatever state Popen is in."""

import signal
import threading
import time
from pathlib import Path

from tasks.system import proc


def _finishes(call) -> bool:
    """Whether call returns at all (a hang is the bug these tests look for): a bound, not a timing."""
    done = threading.Thread(target=call, daemon=True)
    done.start()
    done.join(60)
    return not done.is_alive()


def _ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_stop_ends_the_whole_group_after_its_grace(tmp_path):
    """A group that ignores SIGTERM is killed once the grace is over: all of it, not only the leader."""
    grandchild = tmp_path / "grandchild"
    child = proc.start(
        [
            "bash",
            "-c",
            f"trap '' TERM; sleep 60 & echo $! > {grandchild}.new; mv {grandchild}.new {grandchild}; sleep 60",
        ]
    )
    while not grandchild.exists():  # the trap is set before it is written
        time.sleep(0.05)
    assert _finishes(lambda: proc.stop(child, grace=1))
    assert child.returncode == -signal.SIGKILL, "killed, not waited for until its sleep ended"
    assert _ended(int(grandchild.read_text()))


def test_a_child_is_reaped_even_when_popen_s_wait_lock_was_left_taken():
    """A handler that raised between Popen taking its wait lock and releasing it
    leaves the lock held; Popen.wait would then block for ever on a dead child."""
    child = proc.start(["true"])
    # Popen's private lock, taken as the interrupted Popen left it: the state under test.
    assert child._waitpid_lock.acquire(False)  # type: ignore[attr-defined]  # private to Popen, not in typeshed
    while not _ended(child.pid):  # a zombie until reaped
        time.sleep(0.05)
    assert _finishes(lambda: proc.stop(child, grace=5))
    assert child.returncode == 0


def test_run_logged_returns_the_exit_status(tmp_path):
    log = tmp_path / "log"
    assert proc.run_logged(["bash", "-c", "echo one; exit 3"], log) == 3
    assert log.read_text() == "one\n"
