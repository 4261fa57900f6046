"""Run a root command in private mount and PID namespaces.

Image builds mount file systems, attach loop devices and start daemons in a
chroot. Inside the sandbox, /run/fai, /var/log/fai and /tmp are private, so
builds can run side by side; when the sandbox's first process ends, however
it ends (success, failure, SIGTERM, SIGKILL of our process), the kernel kills
every process left in it and releases every mount made in it. Only loop
devices outlive it: see tasks/system/loopdev.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

from tasks.system import proc

# PID 1 of the sandbox; "$@" is the command. /tmp becomes a private tmpfs;
# the directories the command needs that lie under /tmp (SANDBOX_KEEP, one
# per line) are bound back into it from the host's /tmp. /var/log/fai is
# bound to SANDBOX_FAI_LOGS when that is set.
_INIT = r"""
set -eu
mkdir -p /run/fai /run/udev /var/log/fai
mount -t tmpfs -o mode=0755 sandbox-run /run/fai
mkdir /run/fai/.host-tmp
mount --bind /tmp /run/fai/.host-tmp
mount -t tmpfs -o mode=1777 sandbox-tmp /tmp
printf '%s\n' "$SANDBOX_KEEP" | while IFS= read -r keep; do
    host=/run/fai/.host-tmp/${keep#/tmp/}
    case $keep in
        /tmp/*) if [ -e "$host" ]; then mkdir -p "$keep"; mount --bind "$host" "$keep"; fi ;;
    esac
done
if [ -n "${SANDBOX_FAI_LOGS:-}" ]; then
    mount --bind "$SANDBOX_FAI_LOGS" /var/log/fai
fi
"$@"
"""

_UNSHARE = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc"]


def command(cmd: Sequence[str]) -> list[str]:
    return [*_UNSHARE, "bash", "-c", _INIT, "sandbox", *cmd]


def environment(base: dict[str, str], keep: Iterable[Path], fai_logs: Path | None = None) -> dict[str, str]:
    env = dict(base)
    env["SANDBOX_KEEP"] = "\n".join(str(Path(p).resolve()) for p in keep)
    if fai_logs is not None:
        env["SANDBOX_FAI_LOGS"] = str(fai_logs)
    return env


def run_logged(cmd: Sequence[str], log: Path, env: dict[str, str], keep: Iterable[Path],
               on_line: Callable[[str], None] | None = None, fai_logs: Path | None = None) -> int:
    """Run cmd in a sandbox, its output appended to log; return its exit status."""
    return proc.run_logged(command(cmd), log, on_line, env=environment(env, keep, fai_logs))
