"""A build's slow steps kept and reused while nothing that shapes them changes.

Built again from its cached base, an image spends most of its time in two
steps whose outcome rarely changes from one build of a cell to the next:
installing the vendor's packages (FAI's instsoft: apt and dpkg unpacking and
configuring about fifty packages) and making the initramfs (mkinitramfs: a
few thousand programs started). As mkosi's incremental mode keeps the tree
its packages made, each step's outcome is kept here, per cell, and reused by
the next build whose inputs are the same:

- The step's outcome is what it changed in the tree: every path whose inode
  changed after the step began (its ctime, which no program can set back),
  archived with its metadata, and the paths it removed. Reused, those paths
  are removed and the archive unpacked over the tree: what the step did not
  touch stays this build's own.
- The key is everything the step reads: the tree as it begins (every path's
  type, mode, owner and content; not its times, which differ from build to
  build while content does not), the config-space files the caller names (the
  package lists, hooks...), the architecture, the classes and FAI's version.
  A file the build has not touched since it unpacked its base (its ctime is
  no newer than the mark hooks/extrbase.DEBIAN leaves then) has the base's
  content: the key names the base by its digest and reads only the files the
  build touched, instead of every file of the tree (half a second a step).
  Each step leaves out of its key what it does not read and only one build's
  run writes (logs, apt's binary caches, the build's proxy).
- The time mkinitramfs clamps its members to (IMAGE_INITRAMFS_EPOCH: the
  base's, the same for every version built from it) is in the initramfs's key,
  whose archive holds it. Neither the build's own time (a dated version's: a
  new one each run by default) nor the disk's identifiers, which also derive
  from the version, are in a key (the initramfs's masks them in the fstab it
  reads). The build clamps every newer file time to its own time at its end,
  so what a restored step wrote (times after it began) is stamped with the
  restoring build's clock, as if written then, and ends at that build's time.

One outcome per step and cell (the last one made) lives in the cell's
directory of the work directory's cache, written under a temporary name and
renamed into place; the directory may be removed at any time.

    python -m tasks.stages.stepcache begin STEP [INPUT...]  -> "restored", "missing" or "off"
    python -m tasks.stages.stepcache save STEP              (after the step ran: keep its outcome)

Both read FAI's $target and the build's IMAGE_* variables (tasks/stages/fai.py);
IMAGE_STEP_CACHE unset or empty turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from tasks.stages import identity
from tasks.system import atomic

FORMAT = 3
# Where a step's state lives between begin and save: the build's own /tmp
# (tasks/system/sandbox.py), outside the tree.
STATE_ROOT = Path("/tmp/image-step-cache")
# Touched by hooks/extrbase.DEBIAN once the base is unpacked (IMAGE_BASE_UNPACKED).
BASE_UNPACKED = STATE_ROOT / "base-unpacked"
# FAI's ramdisk (mkramdisk's default FAI_RAMDISKS): dpkg's database, mounted on
# the tree during the build and part of it; the tree's other mounts (proc, sys,
# dev, the build's /tmp...) are not.
RAMDISKS = ("var/lib/dpkg",)
# What is under these is never part of a step's outcome or key (the build
# empties or mounts them); the directories themselves are.
TRANSIENT = ("dev", "proc", "run", "sys", "tmp", "var/tmp")
# Read by no step, written anew by every build's run: logs, apt's binary
# caches, the build's package proxy (hooks/updatebase.DEBIAN).
RUN_OWN = ("var/log", "var/cache/apt", "etc/apt/apt.conf.d/00image-build")


class StepCacheFailed(Exception):
    pass


@dataclass(frozen=True)
class Step:
    key_ignores: tuple[str, ...]  # paths (and what is under them) the step does not read
    outcome_ignores: tuple[str, ...] = ()  # paths the step writes that are not kept
    # Files the step reads whose content names the disk's identifiers (derived from the
    # version: identity.py), which the step does not use: keyed with them masked.
    key_masks: tuple[str, ...] = ()
    timed: bool = False  # the initramfs's time shapes the outcome (else it is left out of the key)


STEPS = {
    # FAI's instsoft (hooks/instsoft.DEBIAN, hooks/configure.DEBIAN). The
    # downloaded packages are apt's cache, not the tree's (scripts/LAST/90-clean).
    "packages": Step(key_ignores=RUN_OWN, outcome_ignores=("var/cache/apt/archives",)),
    # update-initramfs (scripts/DEBIAN/20-initramfs): what no initramfs-tools
    # hook reads, besides: SSH's, cloud-init's, apt's, GRUB's and netplan's
    # settings (the booted system's), documentation, /var, the home directories.
    "initramfs": Step(
        key_ignores=(
            *RUN_OWN,
            "etc/apt",
            "etc/cloud",
            "etc/default/grub",
            "etc/default/grub.d",
            "etc/grub.d",
            "etc/netplan",
            "etc/ssh",
            "home",
            "root",
            "usr/share/doc",
            "usr/share/locale",
            "usr/share/man",
            "var",
            "etc/cloud-release",  # the version, for cloud-init
        ),
        # initramfs-tools reads the file system types of / and /usr (its fsck hook), not the
        # PARTUUIDs that name them: a new version's identifiers keep the initramfs.
        key_masks=("etc/fstab",),
        timed=True,  # mkinitramfs clamps the archive's member times to it (SOURCE_DATE_EPOCH)
    ),
}


def directory(workdir: Path, cell_name: str) -> Path:
    """Where a cell's kept steps live."""
    return workdir / "cache" / "steps" / cell_name


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)


def walk(root: Path, ignores: tuple[str, ...] = ()) -> Iterator[tuple[str, os.stat_result]]:
    """Every path of the tree (relative, sorted) and its lstat, on its own file system and FAI's ramdisks."""
    emptied = tuple(f"{path}/" for path in TRANSIENT)

    def visit(directory: str, prefix: str, device: int) -> Iterator[tuple[str, os.stat_result]]:
        with os.scandir(directory) as found:
            entries = sorted(found, key=lambda entry: entry.name)
        for entry in entries:
            relative = f"{prefix}{entry.name}"
            if _under(relative, ignores) or relative.startswith(emptied):
                continue
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode) and info.st_dev != device and relative not in RAMDISKS:
                continue  # another mount
            yield relative, info
            if stat.S_ISDIR(info.st_mode):
                yield from visit(entry.path, relative + "/", info.st_dev)

    yield from visit(str(root), "", root.lstat().st_dev)


def _content(path: Path | str, size: int | None = None) -> str:
    if size is not None and size <= 1 << 20:  # most files: one read
        with open(path, "rb", buffering=0) as data:
            return xxhash.xxh3_128_hexdigest(data.read())
    digest = xxhash.xxh3_128()
    with open(path, "rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe(
    root: Path, relative: str, info: os.stat_result, masks: tuple[str, ...] = (), from_base: bool = False
) -> str:
    """One line for the key: the path's type, mode, owner and content (with each of masks
    replaced by a placeholder; for a file untouched since the base was unpacked, the base's,
    which the key names), not its times."""
    mode = info.st_mode
    if stat.S_ISREG(mode) and from_base and not masks:
        what = f"f {info.st_size} as in the base"
    elif stat.S_ISREG(mode) and masks:
        content = Path(root, relative).read_bytes()
        for mask in masks:
            content = content.replace(mask.encode(), b"<masked>")
        what = f"f masked {xxhash.xxh3_128_hexdigest(content)}"
    elif stat.S_ISREG(mode):
        what = f"f {info.st_size} {_content(os.path.join(root, relative), info.st_size)}"
    elif stat.S_ISLNK(mode):
        what = f"l {os.readlink(os.path.join(root, relative))}"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        what = f"d {info.st_rdev}"
    else:
        what = "o"
    return f"{relative}\0{stat.S_IMODE(mode):o} {stat.S_IFMT(mode):o} {info.st_uid} {info.st_gid} {what}\n"


def inputs_digest(paths: list[Path]) -> str:
    """The named config-space files and directories: their names and content."""
    digest = hashlib.sha256()
    for path in paths:
        files = [path] if not path.is_dir() else sorted(p for p in path.rglob("*") if not p.is_dir())
        for file in files:
            content = os.readlink(file) if file.is_symlink() else _content(file)
            digest.update(f"{file}\0{os.access(file, os.X_OK)}\0{content}\n".encode())
    return digest.hexdigest()


def fai_version() -> str:
    found = subprocess.run(
        ["dpkg-query", "--show", "--showformat", "${Version}", "fai-client"], capture_output=True, text=True
    )
    return found.stdout.strip()


@dataclass(frozen=True)
class BaseMark:
    """The base the tree was unpacked from, and when the unpacking ended."""

    digest: str  # the base tarball's sha256
    unpacked: int  # the mark's ctime (ns): files no newer were untouched since

    @classmethod
    def from_environment(cls, env) -> BaseMark | None:
        digest, mark = env.get("IMAGE_BASE_SHA256", ""), env.get("IMAGE_BASE_UNPACKED", "")
        if not (digest and mark and os.path.isfile(mark)):
            return None  # FAI ran debootstrap, or an older hook: every file is read
        return cls(digest, os.stat(mark).st_ctime_ns)


@dataclass(frozen=True)
class Build:
    """The running build, as FAI's hooks and scripts see it."""

    target: Path
    cache: Path | None  # None: the cache is off
    facts: dict[str, str]  # what besides the tree and inputs shapes a step
    flawless: bool = True  # no task of the run has failed so far
    identifiers: tuple[str, ...] = ()  # the disk's, which a step's key_masks mask
    base: BaseMark | None = None

    @classmethod
    def from_environment(cls, env=os.environ) -> Build:
        cache = env.get("IMAGE_STEP_CACHE", "")
        # FAI goes on after a failed instsoft (its errors are below STOP_ON_ERROR)
        # and writes the worst error of the run so far to $LOGDIR/task_error.
        worst = Path(env.get("LOGDIR", "/nonexistent"), "task_error")
        flawless = worst.is_file() and worst.read_text().strip() == "0"
        facts = {
            "format": str(FORMAT),
            "arch": env.get("IMAGE_ARCH", ""),
            "time": env.get("IMAGE_INITRAMFS_EPOCH", ""),
            "classes": " ".join(env["classes"].split()),  # FAI exports them
            "fai": fai_version(),
        }
        identifiers = tuple(env[name] for name in identity.VARIABLES if env.get(name))
        base = BaseMark.from_environment(env)
        return cls(Path(env["target"]), Path(cache) if cache else None, facts, flawless, identifiers, base)

    def state(self, step: str) -> Path:
        return STATE_ROOT / step

    def entries(self, step: str) -> list[Path]:
        return sorted(self.cache.glob(f"{step}.*")) if self.cache and self.cache.is_dir() else []


def begin(build: Build, step: str, inputs: list[Path]) -> str:
    """Before the step: its key and the tree's paths; its outcome put in place when kept."""
    if build.cache is None:
        return "off"
    rules = STEPS[step]
    state = build.state(step)
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    # The step's changes are the inodes changed from now on, by the kernel's
    # clock as it stamps them: a file's, taken before the tree is read.
    (state / "began").touch()
    key = hashlib.sha256()
    facts = {name: value for name, value in build.facts.items() if name != "time" or rules.timed}
    base = {"base": build.base.digest} if build.base else {}
    for name, value in {**facts, **base, "step": step, "inputs": inputs_digest(inputs)}.items():
        key.update(f"{name} {value}\n".encode())
    paths = []
    for relative, info in walk(build.target):
        paths.append(f"{relative}\0{stat.S_IFMT(info.st_mode):o}")
        if not _under(relative, rules.key_ignores):
            masks = build.identifiers if relative in rules.key_masks else ()
            from_base = build.base is not None and info.st_ctime_ns <= build.base.unpacked
            key.update(describe(build.target, relative, info, masks, from_base).encode())
    (state / "paths").write_text("\n".join(paths))
    name = f"{step}.{key.hexdigest()[:32]}"
    (state / "name").write_text(name)
    kept = build.cache / name
    if not (kept / "tree.tar.zst").is_file():
        return "missing"
    try:
        restore(build.target, kept)
    except (OSError, ValueError, subprocess.CalledProcessError) as error:
        # The tree is half restored: this build fails; the next one makes the step.
        shutil.rmtree(kept, ignore_errors=True)
        raise StepCacheFailed(
            f"restoring {kept} failed ({error}); it is removed: the next build makes the step"
        ) from None
    (state / "restored").touch()
    return "restored"


def restore(target: Path, kept: Path) -> None:
    """Remove what the step removed, unpack what it changed; what it wrote gets this moment's time."""
    for relative in (kept / "removed").read_text().split("\0"):
        if relative:
            path = target / relative
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.is_symlink() or path.exists():
                path.unlink()
    with open(kept / "tree.tar.zst", "rb") as archive:
        subprocess.run(
            ["tar", "--extract", "--zstd", "--numeric-owner", "--same-owner", "--same-permissions",
             "--xattrs", "--xattrs-include=*", "--directory", str(target)],
            stdin=archive,
            check=True,
        )  # fmt: skip
    began = int((kept / "began").read_text())
    now = time.time_ns()
    for relative in (kept / "paths").read_text().split("\0"):
        written = os.path.join(target, relative)
        if os.lstat(written).st_mtime_ns >= began:
            os.utime(written, ns=(now, now), follow_symlinks=False)


def save(build: Build, step: str) -> str:
    """After the step ran: keep what it changed, unless its outcome was restored, the cache is
    off, or a task of the run failed (only what a flawless run made is kept)."""
    state = build.state(step)
    if build.cache is None:
        return "off"
    if not (state / "name").is_file():
        return "not kept: the step did not begin"
    if (state / "restored").exists():
        return "not kept: restored, as kept before"
    if not build.flawless:
        return "not kept: a task of this run failed"
    rules = STEPS[step]
    began = (state / "began").stat().st_ctime_ns
    before = dict(line.split("\0") for line in (state / "paths").read_text().splitlines() if line)
    touched: set[str] = set()
    after: dict[str, str] = {}
    for relative, info in walk(build.target, rules.outcome_ignores):
        after[relative] = f"{stat.S_IFMT(info.st_mode):o}"
        if info.st_ctime_ns >= began and not stat.S_ISSOCK(info.st_mode):
            touched.add(relative)
    # Unpacking a file replaces it, which changes its directory where the step
    # may have rewritten it in place: the directories come along, so their
    # times are set back once unpacked.
    for relative in list(touched):
        while "/" in relative:
            relative = relative.rsplit("/", 1)[0]
            touched.add(relative)
    changed = [".", *(path for path in after if path in touched)]  # parents first
    # Removed, or replaced by another type of file (unpacking would not replace a directory).
    removed = [
        path for path, kind in before.items() if after.get(path) != kind and not _under(path, rules.outcome_ignores)
    ]
    build.cache.mkdir(parents=True, exist_ok=True)
    for stale in build.cache.glob(".*.partial"):  # any key's, left by an interrupted save
        atomic.remove(stale)
    name = (state / "name").read_text()
    partial = atomic.partial_path(build.cache / name)
    partial.mkdir()
    try:
        (partial / "removed").write_text("\0".join(removed))
        (partial / "paths").write_text("\0".join(changed))
        (partial / "began").write_text(str(began))
        with open(partial / "tree.tar.zst", "wb") as archive:
            subprocess.run(
                ["tar", "--create", "--format=posix", "--directory", str(build.target), "--numeric-owner", "--xattrs",
                 "--xattrs-include=*", "--use-compress-program=zstd -1 -T0", "--no-recursion", "--null",
                 "--files-from=-"],
                input="\0".join(changed).encode(),
                stdout=archive,
                check=True,
            )  # fmt: skip
        record = {"paths": len(changed), "removed": len(removed), "made": int(time.time())}
        (partial / "info.json").write_text(json.dumps(record) + "\n")
        for older in build.entries(step):
            shutil.rmtree(older)
        partial.rename(build.cache / name)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    size = (build.cache / name / "tree.tar.zst").stat().st_size
    return f"kept {len(changed)} paths ({size / (1 << 20):.1f} MiB), {len(removed)} removed"


def main(argv: list[str]) -> int:
    command, step, *inputs = argv
    if step not in STEPS:
        print(f"stepcache: no step {step!r} (known: {', '.join(STEPS)})", file=sys.stderr)
        return 2
    build = Build.from_environment()
    started = time.monotonic()
    if command == "begin":
        try:
            outcome = begin(build, step, [Path(path) for path in inputs])
        except StepCacheFailed as error:
            print(f"stepcache: {step}: {error}", file=sys.stderr)
            return 1
    elif command == "save":
        outcome = save(build, step)
    else:
        print(f"stepcache: no command {command!r} (begin, save)", file=sys.stderr)
        return 2
    print(f"stepcache: {step}: {outcome} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    print(outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
