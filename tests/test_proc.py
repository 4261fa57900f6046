"""tasks/system/proc.py: children stop, and are waited for, whatever state Popen is in."""

import signal
import time

from tasks.system import proc


def test_stop_ends_the_whole_group_within_its_grace():
    child = proc.start(["bash", "-c", "trap '' TERM; sleep 60 & sleep 60"])
    time.sleep(0.2)
    started = time.monotonic()
    proc.stop(child, grace=1)
    assert time.monotonic() - started < 5
    assert child.returncode == -signal.SIGKILL


def test_a_child_is_reaped_even_when_popen_s_wait_lock_was_left_taken():
    """A handler that raised between Popen taking its wait lock and releasing it
    leaves the lock held; Popen.wait would then block for ever on a dead child."""
    child = proc.start(["true"])
    assert child._waitpid_lock.acquire(False)  # as the interrupted Popen left it
    time.sleep(0.3)  # dead by now: a zombie until reaped
    started = time.monotonic()
    proc.stop(child, grace=5)
    assert time.monotonic() - started < 3
    assert child.returncode == 0


def test_run_logged_returns_the_exit_status(tmp_path):
    log = tmp_path / "log"
    assert proc.run_logged(["bash", "-c", "echo one; exit 3"], log) == 3
    assert log.read_text() == "one\n"
