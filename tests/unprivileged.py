"""Test helper: commands run as a CI job on a runner without privileges (tools/unprivileged),
and a watch on the host that nothing of an image is attached or mounted meanwhile."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "unprivileged"


def command(argv: list[str], volumes: Iterable[Path]) -> tuple[list[str], dict[str, str]]:
    """argv run in the unprivileged container, the directories in volumes bound in; the
    environment tools/unprivileged reads (to be added to the caller's)."""
    return [str(TOOL), *argv], {"UNPRIVILEGED_VOLUMES": " ".join(str(v) for v in volumes)}


def loop_devices() -> set[str]:
    """Every attached loop device, with its backing file."""
    out = subprocess.run(
        ["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"], capture_output=True, text=True, check=True
    ).stdout
    return {f"{d['name']} ({d.get('back-file')})" for d in (json.loads(out)["loopdevices"] if out.strip() else [])}


def mounts_of_images(under: Iterable[Path]) -> set[str]:
    """The host's mounts of a loop device, or on anything under the given directories: what
    building an image used to mount. (podman's own mounts for the container, its overlay
    and the binds of the host's directories, are neither.)"""
    prefixes = [f"{Path(p).resolve()}/" for p in under]
    found = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point, rest = fields[4], fields[fields.index("-") + 1 :]
        fstype, source = rest[0], rest[1]
        if source.startswith("/dev/loop") or any(f"{point}/".startswith(p) for p in prefixes):
            found.add(f"{point} ({fstype} from {source})")
    return found


class HostWatch:
    """Watches the host while a command runs: a loop device attached, or an image's file system
    mounted, is recorded the moment it is seen (the host's own at the start excepted)."""

    def __init__(self, under: Iterable[Path], interval: float = 0.2) -> None:
        self.under = list(under)
        self.interval = interval
        self.seen: set[str] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._before = loop_devices() | mounts_of_images(self.under)

    def _watch(self) -> None:
        while True:
            self.seen |= (loop_devices() | mounts_of_images(self.under)) - self._before
            self.samples += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> HostWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
