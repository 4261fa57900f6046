"""The build host's apt on a state of its own: its sources, lists and status,
none of the host's settings. No privilege: nothing is installed.

The tools tree (tasks/system/toolstree.py) downloads packages through it, and
the base (tasks/stages/baseshare.py) asks it what a selection of packages would
install on a given architecture, from a base's own package lists.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.system import proc

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


@dataclass(frozen=True)
class AptRoot:
    dir: Path  # apt's state, caches and settings: made by prepare()
    arch: str  # Debian's name of the architecture whose packages apt sees
    lists: Path | None = None  # package lists to read instead of dir/lists (e.g. a base's)
    status: str = "/dev/null"  # dpkg's status: by default, nothing is installed

    @property
    def config(self) -> Path:
        return self.dir / "apt.conf"

    def prepare(self, sources: Sequence[str]) -> None:
        """Write the settings and these sources.list lines; make apt's directories."""
        lists = self.lists or self.dir / "lists"
        for d in (lists / "partial", self.dir / "cache/archives/partial", self.dir / "etc"):
            d.mkdir(parents=True, exist_ok=True)
        (self.dir / "etc/sources.list").write_text("".join(f"{line}\n" for line in sources))
        settings = {
            "APT::Architecture": self.arch,
            "APT::Architectures": self.arch,
            "Dir::State": self.dir,
            "Dir::State::Lists": lists,
            "Dir::State::status": self.status,
            "Dir::Cache": self.dir / "cache",
            "Dir::Etc::SourceList": self.dir / "etc/sources.list",
            "Dir::Etc::SourceParts": self.dir / "etc",
            "Dir::Etc::Parts": self.dir / "etc",
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": self.dir / "etc",
            "Debug::NoLocking": "true",
            "Acquire::Languages": "none",
        }
        self.config.write_text("".join(f'{key} "{value}";\n' for key, value in settings.items()))

    def environment(self) -> dict[str, str]:
        env = {"APT_CONFIG": str(self.config), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        env.update({k: v for k, v in os.environ.items() if k.lower() in ("http_proxy", "no_proxy")})
        return env

    def run(self, *arguments: str, cwd: Path | None = None) -> str:
        """apt-get with these arguments; proc.CommandFailed when it fails."""
        return proc.run(["apt-get", "--quiet", *arguments], env=self.environment(), cwd=cwd)

    def installs(self, packages: Sequence[str]) -> frozenset[str]:
        """What `apt-get install --no-install-recommends` of these packages would install.

        Asked as the packages it would download ('URL' NAME_VERSION_ARCH.deb SIZE HASH), with no
        package in the (empty) archives cache: apt's simulation orders the whole installation as
        dpkg would run it, three times slower."""
        uris = self.run("--print-uris", "--no-install-recommends", "install", *packages)
        return frozenset(line.split()[1].split("_", 1)[0] for line in uris.splitlines() if line.startswith("'"))
