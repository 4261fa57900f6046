"""Run a root command in private mount and PID namespaces.

Image builds mount file systems, attach loop devices and start daemons in a
chroot. Inside the sandbox, /run/fai, /var/log/fai and /tmp are private, so
builds can run side by side; when the sandbox's first process ends, however
it ends (success, failure, SIGTERM, SIGKILL of our process), the kernel kills
every process left in it and releases every mount made in it. Only loop
devices outlive it: see tasks/system/loopdev.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tasks.system import proc

# PID 1 of the sandbox: makes the private directories, then runs the command.
INIT_SCRIPT = Path(__file__).with_name("sandbox-init.sh")

_UNSHARE = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc"]


def command(cmd: Sequence[str]) -> list[str]:
    return [*_UNSHARE, "bash", str(INIT_SCRIPT), *cmd]


def environment(base: dict[str, str], keep: Iterable[Path], fai_logs: Path | None = None) -> dict[str, str]:
    env = dict(base)
    env["SANDBOX_KEEP"] = "\n".join(str(Path(p).resolve()) for p in keep)
    if fai_logs is not None:
        env["SANDBOX_FAI_LOGS"] = str(fai_logs)
    return env


def run_logged(
    cmd: Sequence[str],
    log: Path,
    env: dict[str, str],
    keep: Iterable[Path],
    on_line: Callable[[str], None] | None = None,
    fai_logs: Path | None = None,
) -> int:
    """Run cmd in a sandbox, its output appended to log; return its exit status."""
    return proc.run_logged(command(cmd), log, on_line, env=environment(env, keep, fai_logs))
