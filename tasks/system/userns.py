"""Run a command in a user namespace of its own: a build's privileges end at its namespaces.

A build mounts (/proc, /sys, /dev, a tmpfs for the image's tree) and runs
chroot and dpkg, which changes files' owners. Inside a user namespace those
need no privilege on the host: a container without --privileged may run it.
The namespace maps the ids 0 to IDS-1 to themselves (dpkg gives files to the
system users and groups of the image, and to `nobody`, 65534), as rootful
podman's container root may (it holds CAP_SETUID and CAP_SETGID); util-linux's
`unshare --map-users` would ask newuidmap, which takes its ranges from
/etc/subuid and has none for root. Then the command is exec'd in place: the
process is the same, so signals and deaths reach it as before.

    python -m tasks.system.userns COMMAND...
"""

from __future__ import annotations

import ctypes
import os
import sys

IDS = 65536  # 0 .. 65535: every id a Debian system uses
CLONE_NEWUSER = 0x10000000


class NoUserNamespace(OSError):
    pass


def enter() -> None:
    """Move this (single-threaded) process into a new user namespace with the identity map."""
    ready_read, ready_write = os.pipe()
    done_read, done_write = os.pipe()
    helper = os.fork()
    if helper == 0:  # stays in the parent namespace, where it may write the maps
        os.close(ready_write)
        os.close(done_read)
        parent = os.getppid()
        ok = os.read(ready_read, 1) == b"1"
        status = 1
        if ok:
            try:
                _write_maps(parent)
                status = 0
            except OSError as refused:
                os.write(2, f"userns: cannot map ids 0-{IDS - 1}: {refused}\n".encode())
        os.write(done_write, b"1" if status == 0 else b"0")
        os._exit(status)
    os.close(ready_read)
    os.close(done_write)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER) != 0:
        errno = ctypes.get_errno()
        os.write(ready_write, b"0")
        os.waitpid(helper, 0)
        raise NoUserNamespace(errno, f"cannot make a user namespace: {os.strerror(errno)}")
    os.write(ready_write, b"1")
    mapped = os.read(done_read, 1) == b"1"
    os.waitpid(helper, 0)
    if not mapped:
        raise NoUserNamespace(0, f"cannot map ids 0-{IDS - 1} into the user namespace")


def privileged() -> bool:
    """Whether this process may mount on its own (CAP_SYS_ADMIN in its effective set): root on a
    host may, a container's root without --privileged may not."""
    with open("/proc/self/status") as status:
        effective = next((line.split()[1] for line in status if line.startswith("CapEff:")), "0")
    return bool(int(effective, 16) & (1 << 21))


def _write_maps(pid: int) -> None:
    for kind in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{kind}", "w") as out:
            out.write(f"0 0 {IDS}\n")


def main(argv: list[str]) -> int:
    try:
        enter()
    except NoUserNamespace as error:
        print(f"userns: {error.strerror}", file=sys.stderr)
        return 125
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
