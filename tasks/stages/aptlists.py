"""Whether the base's package lists are still the mirror's.

A build's apt sources are those its base was upgraded from (base.build_sources),
and the base keeps apt's lists of them (base-upgrade.sh). When every suite's
InRelease on the mirror is, byte for byte, the one the base holds, FAI's
updatebase has nothing to do: `apt-get update` would fetch the lists the base
has, and `apt-get dist-upgrade` would find nothing newer than what the base
was upgraded to. hooks/updatebase.DEBIAN then runs FAI's updatebase without
apt (its mounts and diversions are still made), which saves apt's update and
upgrade: about 3 s of every build, 25 s under qemu-user. Any doubt (a list the
base lacks, a mirror that does not answer) runs it in full.

    python -m tasks.stages.aptlists current   exit 0: the base's lists are the mirror's;
                                              1: says what differs (updatebase runs in full)

It reads FAI's $target, the build's sources (IMAGE_BUILD_SOURCES) and its
package proxy (IMAGE_APT_PROXY, tasks/system/aptcache.py), through which it
fetches as apt would.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import requests

LISTS = Path("var/lib/apt/lists")
TIMEOUT = (10, 30)  # connect, read: seconds
# What apt's URItoFileName quotes as %xx besides control and non-ASCII bytes.
_QUOTED = set('\\|{}[]<>"^~_=!@#$%*')


@dataclass(frozen=True)
class Source:
    """A sources.list's `deb` line."""

    mirror: str
    suite: str
    components: tuple[str, ...]


def sources(text: str) -> list[Source]:
    """The `deb` lines of a sources.list (one-line format, without options)."""
    found = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 3 and words[0] == "deb" and not words[1].startswith("["):
            found.append(Source(words[1].rstrip("/"), words[2], tuple(words[3:])))
    return found


def suites(text: str) -> list[tuple[str, str]]:
    """The (mirror, suite) pairs of a sources.list's `deb` lines."""
    return [(source.mirror, source.suite) for source in sources(text)]


def release_url(mirror: str, suite: str) -> str:
    return f"{mirror.rstrip('/')}/dists/{suite}/InRelease"


def list_name(url: str) -> str:
    """The file apt keeps a URL's download in, under var/lib/apt/lists: the URL
    without its scheme and user, quoted, slashes as underscores."""
    parts = urlsplit(url)
    plain = (parts.hostname or "") + (f":{parts.port}" if parts.port else "") + parts.path
    quoted = "".join(f"%{ord(c):02x}" if c in _QUOTED or ord(c) <= 0x20 or ord(c) >= 0x7F else c for c in plain)
    return quoted.replace("/", "_")


def differences(target: Path, sources: str, fetch: Callable[[str], bytes]) -> list[str]:
    """What keeps the base's lists from being the mirror's: empty when they are."""
    pairs = suites(sources)
    if not pairs:
        return ["the build has no apt sources"]
    found = []
    for mirror, suite in pairs:
        url = release_url(mirror, suite)
        kept = target / LISTS / list_name(url)
        if not kept.is_file():
            found.append(f"{suite}: the base has no {kept.name}")
            continue
        try:
            current = fetch(url)
        except requests.RequestException as error:
            found.append(f"{suite}: {url} could not be fetched ({error})")
            continue
        if current != kept.read_bytes():
            found.append(f"{suite}: the mirror's InRelease is not the base's (the archive moved on)")
    return found


def archive_time(lists: Path) -> int:
    """The archive's time as the lists show it: the newest Date of their suites' InRelease files,
    in seconds since the epoch (a base's SOURCE_DATE_EPOCH: tasks/stages/base.py)."""
    dates = []
    for release in sorted(lists.glob("*_InRelease")):
        for line in release.read_text(errors="replace").splitlines():
            if line.startswith("Date:"):
                dates.append(int(parsedate_to_datetime(line[5:].strip()).timestamp()))
                break
    if not dates:
        raise ValueError(f"{lists}: no InRelease file with a Date")
    return max(dates)


def fetcher(proxy: str | None) -> Callable[[str], bytes]:
    session = requests.Session()
    session.trust_env = False  # the build's proxy, or none, as apt's configuration says
    proxies = {"http": proxy} if proxy else {}

    def fetch(url: str) -> bytes:
        answer = session.get(url, proxies=proxies, timeout=TIMEOUT)
        answer.raise_for_status()
        return answer.content

    return fetch


def main(argv: list[str]) -> int:
    if argv != ["current"]:
        print(__doc__, file=sys.stderr)
        return 2
    found = differences(
        Path(os.environ["target"]),
        os.environ.get("IMAGE_BUILD_SOURCES", ""),
        fetcher(os.environ.get("IMAGE_APT_PROXY") or None),
    )
    for line in found:
        print(f"aptlists: {line}")
    if not found:
        print("aptlists: the base's package lists are the mirror's")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
