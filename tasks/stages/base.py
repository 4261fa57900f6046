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
installed automatically, as each image's own apt would mark them), and the
release's updates and security fixes (its class's APT_SUITES and
APT_SECURITY_SUITE): each vendor's build then installs only what its own
classes add, and its dist-upgrade finds little or nothing left to do.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model.matrix import Architecture, BuildSettings, Release
from tasks.progress import StageProgress
from tasks.stages import faiconfig
from tasks.system import atomic, binfmt, checksum, cpu, hostenv, proc, sandbox

# Bump when the way the base is made changes.
BASE_FORMAT = 6  # 6: made in a user namespace, no device nodes in /dev
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


def base_config(release: Release, arch: str, settings: BuildSettings, content: BaseContent = BaseContent()) -> dict:
    return {
        "format": BASE_FORMAT,
        "release": release.name,
        "arch": arch,
        "mirror": settings.mirror,
        "debootstrap": DEBOOTSTRAP_OPTIONS,
        "include": list(content.include),
        "upgrade_from": list(content.sources),
        "shared_by": [list(selection) for selection in content.selections],
    }


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
        raise BaseFailed("making a base system needs root (in a container, rootful podman's will do: README.md)")
    if not shutil.which("debootstrap"):
        raise BaseFailed("debootstrap not found: install the Debian package debootstrap")
    binfmt.ensure(arch)
    files.dir.mkdir(parents=True, exist_ok=True)
    atomic.remove(files.staging)
    root = files.staging / "root"
    log = files.staging / "base.log"
    files.staging.mkdir(parents=True)
    cmd = ["debootstrap", *DEBOOTSTRAP_OPTIONS, f"--arch={arch}", release.name, str(root), settings.mirror]
    log.write_text(f"# {' '.join(cmd)}\n")
    cmd = ["bash", str(DEBOOTSTRAP_SCRIPT), str(root), *cmd]
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
            with cpu.slots(cpu_slots, want=1), aptcache.PackageCache(package_cache) as cache:
                if settings.mirror.startswith("http://"):
                    env["http_proxy"] = cache.url  # debootstrap fetches with wget
                status = sandbox.run_logged(
                    cmd, log, env, keep=[files.staging, DEBOOTSTRAP_SCRIPT.parent], on_line=on_line
                )
                if status == 0 and (content.sources or content.include or content.selections):
                    sources = content.sources or (f"deb {settings.mirror} {release.name} main",)
                    upgrade = ["bash", str(UPGRADE_SCRIPT), str(root), *sources]
                    env["BASE_PACKAGES"] = " ".join(content.include)
                    env["BASE_SELECTIONS"] = "\n".join(" ".join(selection) for selection in content.selections)
                    with open(log, "a") as out:
                        out.write(
                            f"# upgrade from: {'; '.join(sources)}; install: {env['BASE_PACKAGES']}; and what all "
                            f"of these install alike: {' | '.join(' '.join(s) for s in content.selections)}\n"
                        )
                    status = sandbox.run_logged(
                        upgrade, log, env, keep=[files.staging, UPGRADE_SCRIPT.parent], on_line=on_line
                    )
            with open(log, "a") as out:
                out.write(f"# {cache.stats.summary()}\n")
        if status != 0:
            atomic.commit(log, files.log)
            tail = "\n".join(f"  {line}" for line in files.log.read_text(errors="replace").splitlines()[-15:])
            raise BaseFailed(
                f"making the base {files.name} failed ({status}); full log: {files.log}\n{tail}", log=files.log
            )
        # Downloaded packages are not part of the base (its package lists are: base-upgrade.sh).
        for leftover in (root / "var/cache/apt/archives").glob("*.deb"):
            leftover.unlink()
        with atomic.output(files.tarball) as partial:
            proc.run(
                [
                    "tar",
                    "--create",
                    "--zstd",
                    "--xattrs",
                    "--xattrs-include=*",
                    "--numeric-owner",
                    # What debootstrap's bound device nodes left (empty files): every build's /dev
                    # is bound from the build host's (fai_config/hooks/updatebase.DEBIAN).
                    "--exclude=./dev/*",
                    "--directory",
                    str(root),
                    "--file",
                    str(partial),
                    ".",
                ]
            )
        checksum.sha256_kept(files.tarball)  # once here, instead of by the first builds of its images
        atomic.commit(log, files.log)
    finally:
        atomic.remove(files.staging)  # the sandbox, and every mount in it, is gone
