"""The shared base: one debootstrapped system per release and architecture.

Every vendor image of a release and architecture starts from the same
minimal system, so debootstrap runs once for all of them instead of once per
image; the config space's hook hooks/extrbase.DEBIAN unpacks it in place of
FAI's own debootstrap. The base is made again when its settings change or
after build.base_max_age_days (each build still dist-upgrades it).

The base already holds the packages every image of its release and
architecture gets (the package lists of the DEBIAN, release and
architecture classes that apply whatever the vendor), what apt installs for
every one of its images' own selections alike (the kernel's dependencies:
each image names a kernel, and both kernels need the same; marked as
installed automatically, as each image's own apt would mark them;
tasks/stages/baseshare.py), and the release's updates and security fixes
(its class's APT_SUITES and APT_SECURITY_SUITE): each vendor's build then
installs only what its own classes add, and its dist-upgrade finds little or
nothing left to do.

A base made again from the same packages and the same archive is the same
bytes, so the images built on it are not made again: every time in it is at
most the archive's (the newest Date of its suites' InRelease), what
belongs to the build host or to the moment (machine IDs, logs, the host's
name and resolver, ldconfig's inode cache, apt's binary caches) is left out,
password ages count from the archive's day, and the tarball lists its members
in name order with fixed owners and no access or change times.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import StageFailed, log_tail
from tasks.model.matrix import Architecture, BuildSettings, Release
from tasks.model.records import BaseShares, RecordError
from tasks.progress import StageProgress
from tasks.stages import baseshare, faiconfig
from tasks.system import aptroot, atomic, binfmt, checksum, cpu, hostenv, proc, sandbox

# Bump when the way the base is made changes.
BASE_FORMAT = 7  # 7: the same inputs make the same bytes; shared packages resolved on the host
DEBOOTSTRAP_OPTIONS = ["--variant=minbase", "--components=main"]
# The class whose packages every image installs; its list goes into the base.
COMMON_CLASS = "DEBIAN"

# Run in the sandbox once debootstrap is done: upgrade the base and install
# the packages every image gets (the script says how).
UPGRADE_SCRIPT = Path(__file__).with_name("base-upgrade.sh")
# debootstrap itself runs through this one, in the sandbox's user namespace.
DEBOOTSTRAP_SCRIPT = Path(__file__).with_name("base-debootstrap.sh")


class BaseFailed(StageFailed):
    pass


@dataclass(frozen=True)
class BaseFiles:
    name: str  # bookworm-amd64
    dir: Path

    @classmethod
    def of(cls, workdir: Path, name: str) -> BaseFiles:
        return cls(name, workdir / "base")

    @property
    def tarball(self) -> Path:
        return self.dir / f"{self.name}.tar.zst"

    @property
    def log(self) -> Path:
        return self.dir / f"{self.name}.log"

    @classmethod
    def of_tarball(cls, tarball: Path) -> BaseFiles:
        return cls(tarball.name.removesuffix(".tar.zst"), tarball.parent)

    @property
    def shares(self) -> Path:
        """records.BaseShares: what the base holds for all its images alike (baseshare.py)."""
        return self.dir / f"{self.name}.shares.json"

    @property
    def installs_memo(self) -> Path:
        return self.dir / f".{self.name}.installs.json"

    @property
    def staging(self) -> Path:
        return self.dir / f".{self.name}.build"


def package_cache(workdir: Path) -> Path:
    """Packages fetched by every build (tasks/system/aptcache.py)."""
    return workdir / "cache" / "packages"


def installed_by(lists: Mapping[str, list], classes: tuple[str, ...]) -> tuple[str, ...]:
    """What FAI installs for these classes, from the package lists (faiconfig.package_lists):
    the `install` and `install-norec` sections of their package_config files that name no
    class, or a class among them (FAI installs a section when any class it names is defined)."""
    packages = []
    for cls in classes:
        for command, condition, names in lists.get(cls, ()):
            if command in ("install", "install-norec") and (not condition or set(condition) & set(classes)):
                packages += names
    return tuple(dict.fromkeys(packages))


def build_sources(config_space: Path, release: Release, settings: BuildSettings) -> tuple[str, ...]:
    """The apt sources of a build: every suite the release's images use (the
    release itself, its updates, its security suite), from the build mirrors.
    The base is upgraded from them, and FAI's hooks/repository.DEBIAN writes
    them into the image being built (IMAGE_BUILD_SOURCES)."""
    variables = faiconfig.class_variables(config_space, release.fai_class)
    suites = variables.get("APT_SUITES", "").split() or [release.name]
    lines = [f"deb {settings.mirror} {suite} main" for suite in suites]
    if variables.get("APT_SECURITY_SUITE"):
        lines.append(f"deb {settings.security_mirror} {variables['APT_SECURITY_SUITE']} main")
    return tuple(lines)


@dataclass(frozen=True)
class BaseContent:
    """What goes into a base beyond debootstrap's minbase, read from the config space."""

    include: tuple[str, ...] = ()  # packages apt adds to debootstrap's minbase
    sources: tuple[str, ...] = ()  # apt sources the base is upgraded from; none: no upgrade
    # What each image of the base installs beyond `include`, one selection per
    # image: what apt would install for every one of them goes into the base too.
    selections: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def of(
        cls,
        config_space: Path,
        release: Release,
        arch: Architecture,
        settings: BuildSettings,
        images: Sequence[tuple[str, ...]] = (),
    ) -> BaseContent:
        """The content of a base whose images have these classes each (Cell.fai_classes)."""
        # Read once: the graph makes a base's content at every load, no-op runs included.
        lists = faiconfig.package_lists(config_space)
        # Every image of a release and architecture has these classes.
        include = installed_by(lists, (COMMON_CLASS, release.fai_class, *arch.fai_classes))
        selections = {tuple(name for name in installed_by(lists, classes) if name not in include) for classes in images}
        return cls(include, build_sources(config_space, release, settings), tuple(sorted(selections)))

    def upgrade_sources(self, release: Release, settings: BuildSettings) -> tuple[str, ...]:
        return self.sources or (f"deb {settings.mirror} {release.name} main",)


def base_config(release: Release, arch: str, settings: BuildSettings, content: BaseContent = BaseContent()) -> dict:
    """What shapes a base besides what its images share (shares_current checks that)."""
    return {
        "format": BASE_FORMAT,
        "release": release.name,
        "arch": arch,
        "mirror": settings.mirror,
        "debootstrap": DEBOOTSTRAP_OPTIONS,
        "include": list(content.include),
        "upgrade_from": list(content.sources),
    }


def base_time(tarball: Path) -> int:
    """A base's time: its archive's (records.BaseShares), which no file in it is newer than; the same
    for a base made again from the same archive. The tarball's own time for a base without a record."""
    try:
        return BaseShares.read(BaseFiles.of_tarball(tarball).shares).source_date_epoch
    except RecordError:
        return int(tarball.stat().st_mtime)


def shares_current(
    files: BaseFiles, release: Release, arch: str, settings: BuildSettings, content: BaseContent
) -> baseshare.SharesCurrent:
    """The base's up-to-date check of what its images share (baseshare.py)."""
    return baseshare.SharesCurrent(
        files.shares,
        files.tarball,
        files.installs_memo,
        arch,
        content.upgrade_sources(release, settings),
        content.include,
        content.selections,
    )


def build(
    release: Release,
    arch: str,
    files: BaseFiles,
    settings: BuildSettings,
    package_cache: Path,
    cpu_slots: Path,
    content: BaseContent = BaseContent(),
) -> None:
    from tasks.system import aptcache  # an HTTP server: imported by the builds only, not by the task graph

    if os.geteuid() != 0:
        raise BaseFailed(
            "making a base system needs root (in a container, rootful podman's will do: docs/gitlab-ci.md)"
        )
    if not shutil.which("debootstrap"):
        raise BaseFailed("debootstrap not found: install the Debian package debootstrap")
    binfmt.ensure(arch)
    files.dir.mkdir(parents=True, exist_ok=True)
    atomic.remove(files.staging)
    atomic.remove(files.shares)  # until this base's own is written: a base without one is stale
    root = files.staging / "root"
    log = files.staging / "base.log"
    files.staging.mkdir(parents=True)
    cmd = ["debootstrap", *DEBOOTSTRAP_OPTIONS, f"--arch={arch}", release.name, str(root), settings.mirror]
    log.write_text(f"# {' '.join(cmd)}\n")
    sources = content.upgrade_sources(release, settings)
    try:
        with StageProgress(f"base {files.name}", unit="steps") as progress:

            def on_line(line: str) -> None:
                # "I: Retrieving libc6 2.36-9", "I: Configuring apt...": the verb is the phase.
                # Each package is retrieved, then validated: one phase, not a line per package.
                if line.startswith("I: "):
                    verb = line[3:].split(" ", 1)[0].rstrip(".")
                    progress.update(status="Retrieving" if verb == "Validating" else verb)

            # Never our credentials: the base runs Debian's maintainer scripts.
            env = {**hostenv.passed(), **binfmt.environment(arch)}

            def step(command: list[str], script: Path, note: str = "", **extra: str) -> None:
                if note:
                    with open(log, "a") as out:
                        out.write(f"# {note}\n")
                status = sandbox.run_logged(
                    command, log, {**env, **extra}, keep=[files.staging, script.parent], on_line=on_line
                )
                if status != 0:
                    raise _Failed(status)

            with cpu.slots(cpu_slots, want=1), aptcache.PackageCache(package_cache) as cache:
                if settings.mirror.startswith("http://"):
                    env["http_proxy"] = cache.url  # debootstrap and apt fetch through the package cache
                try:
                    step(["bash", str(DEBOOTSTRAP_SCRIPT), str(root), *cmd], DEBOOTSTRAP_SCRIPT)
                    upgrade = UPGRADE_SCRIPT
                    step(
                        ["bash", str(upgrade), "upgrade", str(root), *sources],
                        upgrade,
                        f"upgrade from: {'; '.join(sources)}; install: {' '.join(content.include)}",
                        BASE_PACKAGES=" ".join(content.include),
                    )
                    try:
                        shared, epoch, answers = _resolve_shares(root, arch, sources, content, files.staging / "apt")
                    except (ValueError, proc.CommandFailed) as error:
                        reason = error.last_line if isinstance(error, proc.CommandFailed) else str(error)
                        with open(log, "a") as out:
                            out.write(f"E: what the images share: apt could not resolve it: {reason}\n")
                        raise _Failed(1) from None
                    step(
                        ["bash", str(upgrade), "share", str(root)],
                        upgrade,
                        f"what all of these install alike: {' | '.join(' '.join(s) for s in content.selections)}",
                        BASE_SHARED=" ".join(shared),
                    )
                except _Failed as failed:
                    status = failed.status
                else:
                    status = 0
            with open(log, "a") as out:
                out.write(f"# {cache.stats.summary()}\n")
        if status != 0:
            atomic.commit(log, files.log)
            raise BaseFailed(
                f"making the base {files.name} failed ({status}); full log: {files.log}\n{log_tail(files.log)}",
                log=files.log,
            )
        settle(root, epoch)
        with atomic.output(files.tarball) as partial:
            proc.run(tar_command(root, partial, epoch))
        sha256 = checksum.sha256_kept(files.tarball)  # once here, instead of by the first builds of its images
        answers.save(files.installs_memo, sha256)  # apt's answers, for the up-to-date check (baseshare.py)
        record = BaseShares(list(content.include), [list(s) for s in content.selections], list(shared), epoch)
        atomic.write_json(files.shares, record.to_json())
        atomic.commit(log, files.log)
    finally:
        atomic.remove(files.staging)  # the sandbox, and every mount in it, is gone


class _Failed(Exception):
    def __init__(self, status: int):
        self.status = status


def _resolve_shares(
    root: Path, arch: str, sources: Sequence[str], content: BaseContent, scratch: Path
) -> tuple[tuple[str, ...], int, baseshare.Memo]:
    """What the images share (baseshare.py), from the lists the base was just upgraded from; the
    archive's time they show; and apt's answers."""
    from tasks.stages import aptlists  # with requests: imported by the builds only, not by the task graph

    lists = root / baseshare.LISTS
    epoch = aptlists.archive_time(lists)
    apt = aptroot.AptRoot(scratch, arch, lists=lists)
    apt.prepare(sources)
    answers = baseshare.Memo(apt.installs)
    return baseshare.resolve(answers, content.include, content.selections), epoch, answers


# Left out of every base: the build host's and the moment's, never the same twice.
# (Emptied, not removed: systemd makes a machine-id at first boot when the file is empty.)
HOST_TRACES_EMPTIED = ("etc/machine-id", "etc/hostname")
HOST_TRACES_REMOVED = (
    "var/lib/dbus/machine-id",
    "etc/.resolv.conf.systemd-resolved.bak",  # the build host's resolv.conf
    "var/cache/ldconfig/aux-cache",  # inode numbers and change times of the build's file system
    # apt writes bytes of its own address space into its caches: with address space layout
    # randomisation (which a container may not turn off), never the same twice. A build's first
    # apt command makes them again (0.6 s; under emulation, 3 s).
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "run/mount",  # libmount's record of what maintainer scripts mounted: there when the build host let them
)
DEBS = "var/cache/apt/archives"  # downloaded packages: the base has their lists, not them


def settle(root: Path, epoch: int) -> None:
    """Make the tree what the same packages and archive always make: see the module's doc."""
    for name in HOST_TRACES_EMPTIED:
        if (root / name).is_file():
            (root / name).write_bytes(b"")
    for name in HOST_TRACES_REMOVED:
        atomic.remove(root / name)
    for deb in (root / DEBS).glob("*.deb"):
        deb.unlink()
    for log in (root / "var/log").rglob("*"):
        if log.is_file() and not log.is_symlink():
            log.write_bytes(b"")
    # Password ages: the archive's day, not the clock's (0, change at next login, stays).
    day = str(epoch // 86400)
    for shadow in (root / "etc/shadow", root / "etc/shadow-"):
        if shadow.is_file():
            rows = [line.split(":") for line in shadow.read_text().splitlines()]
            for row in rows:
                if len(row) > 2 and row[2] not in ("", "0"):
                    row[2] = day
            shadow.write_text("".join(":".join(row) + "\n" for row in rows))  # in place: owner and mode stay
    clamp_times(root, epoch)


def clamp_times(top: Path, epoch: int) -> None:
    """No time under top newer than epoch (links themselves, not what they point to)."""
    for directory, subdirectories, names in os.walk(top):
        for path in (directory, *(os.path.join(directory, name) for name in subdirectories + names)):
            if os.lstat(path).st_mtime > epoch:
                os.utime(path, (epoch, epoch), follow_symlinks=False)


def tar_command(root: Path, tarball: Path, epoch: int, compress: bool = True) -> list[str]:
    """The tarball of a base's tree, the same bytes for the same tree (compressed with zstd)."""
    return [
        "tar",
        "--create",
        *(["--zstd"] if compress else []),
        "--format=posix",
        "--xattrs",
        "--xattrs-include=*",
        "--numeric-owner",
        "--sort=name",
        f"--mtime=@{epoch}",
        "--clamp-mtime",
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        # What debootstrap's bound device nodes left (empty files): every build's /dev
        # is bound from the build host's (fai_config/hooks/updatebase.DEBIAN).
        "--exclude=./dev/*",
        "--directory",
        str(root),
        "--file",
        str(tarball),
        ".",
    ]
