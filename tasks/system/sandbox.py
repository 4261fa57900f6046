"""Run a root command in private user, mount and PID namespaces.

Image builds mount /proc, /sys and /dev into a chroot and start daemons in
it; the image's tree is a tmpfs. Inside the sandbox, /run/fai, /var/log/fai
and /tmp are private, so builds can run side by side; when the sandbox's
first process ends, however it ends (success, failure, SIGTERM, SIGKILL of
our process), the kernel kills every process left in it and releases every
mount made in it, the tree's tmpfs included. Nothing else is attached.

The user namespace (tasks/system/userns.py) holds every privilege the build
uses: root on the host, or in a container without --privileged, runs it
alike. There a fresh /proc cannot be mounted (the container's own hides some
of its files), so the sandbox's /proc is the one it was started with.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tasks.system import proc

# PID 1 of the sandbox: makes the private directories, then runs the command.
INIT_SCRIPT = Path(__file__).with_name("sandbox-init.sh")

# The user namespace first, so that the mount and PID namespaces belong to it. The module runs by
# its path, with no PYTHONPATH and (-P) not even its own directory: it needs only the standard library.
_USERNS = [sys.executable, "-P", str(Path(__file__).with_name("userns.py"))]
_UNSHARE = [*_USERNS, "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child"]


def command(cmd: Sequence[str]) -> list[str]:
    return [*_UNSHARE, "bash", str(INIT_SCRIPT), *cmd]


def environment(
    base: dict[str, str], keep: Iterable[Path], fai_logs: Path | None = None, tmpfs: Path | None = None
) -> dict[str, str]:
    env = dict(base)
    env["SANDBOX_KEEP"] = "\n".join(str(Path(p).resolve()) for p in keep)
    if fai_logs is not None:
        env["SANDBOX_FAI_LOGS"] = str(fai_logs)
    if tmpfs is not None:
        env["SANDBOX_TMPFS"] = str(tmpfs.resolve())
    return env


def run_logged(
    cmd: Sequence[str],
    log: Path,
    env: dict[str, str],
    keep: Iterable[Path],
    on_line: Callable[[str], None] | None = None,
    fai_logs: Path | None = None,
    tmpfs: Path | None = None,
) -> int:
    """Run cmd in a sandbox, its output appended to log; return its exit status.
    `tmpfs`: a directory that is a tmpfs of the sandbox's own (gone with it)."""
    return proc.run_logged(command(cmd), log, on_line, env=environment(env, keep, fai_logs, tmpfs))
