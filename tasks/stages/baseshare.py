"""What every image of a shared base installs alike, resolved by apt from the base's own lists.

Each image of a base names packages of its own beyond those all of them name
(its selection: a kernel, a time daemon, a guest agent). What apt installs for
every selection alike (the kernels' common dependencies) goes into the base
once (base-upgrade.sh's share phase). The base's up-to-date check compares that
set, not the package lists it comes from: a package added to one vendor's
list leaves the base, and so every other vendor's images, as they are, unless
it changes what all the images share.

The build host's apt (tasks/system/aptroot.py) resolves it on an empty system
of the base's architecture, from the lists the base was upgraded from:

    shared = the intersection, over the selections s, of installs(include + s),
             minus installs(include)

The base computes it so when it is made and records it with its inputs
(<base>.shares.json, records.BaseShares). Its check resolves again only when
the images' selections differ from that record, so a no-op run asks apt
nothing; it then reads the lists out of the base's tarball and keeps each
selection's answer for that tarball (.<base>.installs.json).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.model.records import BaseShares, RecordError
from tasks.system import aptroot, atomic, checksum, proc

# Where a base keeps its package lists, in its tree and in its tarball.
LISTS = Path("var/lib/apt/lists")
# What apt would install for these packages (AptRoot.installs, or a Memo of it).
Installs = Callable[[Sequence[str]], frozenset[str]]


def resolve(
    installs: Installs,
    include: Sequence[str],
    selections: Sequence[Sequence[str]],
) -> tuple[str, ...]:
    """What apt installs for every selection alike beyond the include."""
    if not selections:
        return ()
    common = frozenset.intersection(*(installs([*include, *selection]) for selection in selections))
    return tuple(sorted(common - installs(list(include))))


class Memo:
    """An apt (AptRoot.installs) whose answers are kept: for one base, they hold as long as its tarball."""

    def __init__(self, ask: Installs, known: dict[str, list[str]] | None = None):
        self.ask, self.known = ask, dict(known or {})

    def __call__(self, packages: Sequence[str]) -> frozenset[str]:
        key = " ".join(packages)
        if key not in self.known:
            self.known[key] = sorted(self.ask(packages))
        return frozenset(self.known[key])

    @classmethod
    def load(cls, path: Path, tarball_sha256: str, ask: Installs) -> Memo:
        try:
            kept = atomic.read_json(path)
            if kept.get("tarball") == tarball_sha256 and isinstance(kept.get("installs"), dict):
                return cls(ask, kept["installs"])
        except (OSError, ValueError, AttributeError):
            pass  # none yet, or unreadable: asked again
        return cls(ask)

    def save(self, path: Path, tarball_sha256: str) -> None:
        atomic.write_json(path, {"tarball": tarball_sha256, "installs": self.known}, durable=False)


@dataclass(frozen=True)
class SharesCurrent:
    """doit up-to-date check of a base: what its images share now is what it holds.

    False (make the base again) when the record is missing or unreadable, or
    when apt cannot answer: the base's own run then says why."""

    record: Path  # <base>.shares.json
    tarball: Path
    installs_memo: Path  # .<base>.installs.json
    arch: str
    sources: tuple[str, ...]
    include: tuple[str, ...]
    selections: tuple[tuple[str, ...], ...]

    def __call__(self, task, values) -> bool:
        try:
            held = BaseShares.read(self.record)
        except RecordError:
            return False
        if held.include != list(self.include):
            return False
        if held.selections == [list(s) for s in self.selections]:
            return True
        try:
            return list(self.shared_now()) == held.shared
        except (OSError, ValueError, proc.CommandFailed):
            return False

    def shared_now(self) -> tuple[str, ...]:
        """The shared set of the current selections, from the tarball's lists."""
        sha256 = checksum.sha256_kept(self.tarball)
        with tempfile.TemporaryDirectory(prefix=".resolve.", dir=self.tarball.parent) as scratch:
            apt: list[aptroot.AptRoot] = []

            def ask(packages: Sequence[str]) -> frozenset[str]:
                if not apt:  # the lists are read out of the tarball once, and only when needed
                    tree = Path(scratch) / "tree"
                    tree.mkdir()
                    proc.run(
                        ["tar", "--extract", "--zstd", "--no-same-owner", "--file", str(self.tarball),
                         "--directory", str(tree), f"./{LISTS}"]
                    )  # fmt: skip
                    apt.append(aptroot.AptRoot(Path(scratch) / "apt", self.arch, lists=tree / LISTS))
                    apt[0].prepare(self.sources)
                return apt[0].installs(packages)

            memo = Memo.load(self.installs_memo, sha256, ask)
            shared = resolve(memo, self.include, self.selections)
            if apt:
                memo.save(self.installs_memo, sha256)
            return shared
