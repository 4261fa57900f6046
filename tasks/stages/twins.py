"""The image's own programs, built for the host: twins that stand in under emulation.

A foreign build (arm64 on an amd64 host) runs every program of the image under
qemu-user. A program that only reads and writes data can run natively instead
(fai_config/lib/stand-ins.sh), but only where it behaves as the image's would:
the host's own copy qualifies when it is the very version the image has, which
a newer release's image rarely shares with the host. The twin does: the same
version of the same package, as Debian built it for the host's architecture,
with the image's versions of the libraries it loads (the host's C library may
be older than the one it was built against). Same source, same version: the
same output (a depmod index, an initramfs archive, a package's files).

Everything is fetched from the build's own mirror through its package proxy,
and checked as apt would: the suite's InRelease is the one in the image's apt
lists (apt verified its signature when the base was made), the Packages index
has the checksum that InRelease states, the package the checksum its index
states. A twin is kept under the work directory's cache by the versions it
holds (a Debian version's contents never change), so later builds fetch
nothing.

    python -m tasks.stages.twins root PACKAGE...
        prints ROOT LOADER LIBDIRS: the twin tree, its dynamic loader and its
        library directories (colon-separated), relative to the tree; exit 1
        with the reason when there is no twin (the programs stay emulated)

It reads FAI's $target, the build's sources (IMAGE_BUILD_SOURCES), its package
proxy (IMAGE_APT_PROXY) and where twins are kept (IMAGE_TWINS).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks.model.arch import Arch
from tasks.system import atomic

# requests and aptlists are imported where a twin is made: the task graph imports
# this module for directory() alone, and a no-op run should not pay for requests.

STATUS = Path("var/lib/dpkg/status")
# A package's programs load the libraries among its dependencies: those of
# Multi-Arch "same", co-installable for several architectures.
LIBRARY = "same"
_DEPENDENCY_FIELDS = ("Pre-Depends", "Depends")
_NAME = re.compile(r"^\s*([a-z0-9][a-z0-9+.-]*)")


class NoTwin(Exception):
    """There is no twin of these versions on the mirror (or it could not be checked)."""


def paragraphs(text: str) -> Iterator[dict[str, str]]:
    """The paragraphs of a deb822 text (dpkg's status, a Packages index), continuation lines joined."""
    fields: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, ""
        elif line[0] in " \t" and last:
            fields[last] += "\n" + line.strip()
        elif ":" in line:
            last, value = line.split(":", 1)
            fields[last] = value.strip()
    if fields:
        yield fields


def installed(status_text: str) -> dict[str, dict[str, str]]:
    """The installed packages of a dpkg status file, by name."""
    return {
        p["Package"]: p for p in paragraphs(status_text) if p.get("Status") == "install ok installed" and "Package" in p
    }


def dependency_names(fields: dict[str, str]) -> list[str]:
    """Every package a paragraph's Pre-Depends and Depends name (each alternative)."""
    names = []
    for field in _DEPENDENCY_FIELDS:
        for alternative in re.split(r"[,|]", fields.get(field, "")):
            found = _NAME.match(alternative)
            if found:
                names.append(found.group(1))
    return names


def closure(packages: dict[str, dict[str, str]], wanted: list[str]) -> dict[str, str]:
    """The wanted packages the image has and the libraries they load, recursively: name -> version."""
    queue = [name for name in wanted if name in packages]
    if not queue:
        raise NoTwin(f"the image has none of {', '.join(wanted)}")
    found: dict[str, str] = {}
    while queue:
        name = queue.pop()
        if name in found:
            continue
        found[name] = packages[name]["Version"]
        queue += [
            dep
            for dep in dependency_names(packages[name])
            if dep in packages and packages[dep].get("Multi-Arch") == LIBRARY and dep not in found
        ]
    return found


def key(versions: dict[str, str], arch: str) -> str:
    """A twin's name in the cache: its architecture and the versions it holds."""
    listed = "".join(f"{name}={version}\n" for name, version in sorted(versions.items()))
    return f"{arch}-{hashlib.sha256(listed.encode()).hexdigest()[:32]}"


def release_checksums(in_release: str) -> dict[str, tuple[str, int]]:
    """The SHA256 section of a Release file: path -> (digest, size)."""
    listed: dict[str, tuple[str, int]] = {}
    for paragraph in paragraphs(in_release):
        for line in paragraph.get("SHA256", "").splitlines():
            words = line.split()
            if len(words) == 3:
                listed[words[2]] = (words[0], int(words[1]))
    return listed


def _checked(data: bytes, digest: str, what: str) -> bytes:
    if hashlib.sha256(data).hexdigest() != digest:
        raise NoTwin(f"{what} is not what the archive's checksums say")
    return data


def _fetched(url: str, digest: str, fetch: Callable[[str], bytes]) -> bytes:
    """url's bytes, checked against digest."""
    import requests

    try:
        return _checked(fetch(url), digest, url)
    except requests.RequestException as error:
        raise NoTwin(f"{url} could not be fetched ({error})") from error


def _cached_fetch(cache: Path, url: str, digest: str, fetch: Callable[[str], bytes]) -> bytes:
    """url's bytes, checked against digest, kept under cache by it (a Packages
    index: the next twin made while the archive has not moved on reads it again)."""
    kept = cache / digest
    if kept.is_file():
        os.utime(kept)  # used now: kept by prune
        return kept.read_bytes()
    data = _fetched(url, digest, fetch)
    with atomic.output(kept) as partial:
        partial.write_bytes(data)
    return data


def locate(
    target: Path, build_sources: str, versions: dict[str, str], arch: str, fetch: Callable[[str], bytes], cache: Path
) -> dict[str, tuple[str, str]]:
    """Where each package of these versions is for arch: name -> (URL, SHA256), from the checked indexes."""
    from tasks.stages import aptlists

    located: dict[str, tuple[str, str]] = {}
    for source in aptlists.sources(build_sources):
        release_url = aptlists.release_url(source.mirror, source.suite)
        kept = target / aptlists.LISTS / aptlists.list_name(release_url)
        if not kept.is_file():
            raise NoTwin(f"{source.suite}: the image's apt lists have no {kept.name}")
        listed = release_checksums(kept.read_text(errors="replace"))
        for component in source.components:
            index = f"{component}/binary-{arch}/Packages.xz"
            if index not in listed:
                continue
            url = f"{source.mirror}/dists/{source.suite}/{index}"
            text = lzma.decompress(_cached_fetch(cache / "indexes", url, listed[index][0], fetch)).decode()
            for fields in paragraphs(text):
                name = fields.get("Package", "")
                if versions.get(name) == fields.get("Version") and name not in located:
                    located[name] = (f"{source.mirror}/{fields['Filename']}", fields["SHA256"])
    missing = sorted(set(versions) - set(located))
    if missing:
        raise NoTwin(
            "the mirror has no "
            + ", ".join(f"{name} {versions[name]}" for name in missing)
            + f" for {arch} (a rebuild for one architecture only?)"
        )
    return located


@dataclass(frozen=True)
class Twin:
    root: Path
    loader: str  # relative to root
    library_dirs: tuple[str, ...]  # relative to root

    def line(self) -> str:
        return f"{self.root} {self.loader} {':'.join(self.library_dirs)}"


def describe(root: Path, arch: Arch) -> Twin:
    """The loader and library directories of an unpacked twin tree."""
    triplet = arch.spec.multiarch
    library_dirs = tuple(d for d in (f"usr/lib/{triplet}", f"lib/{triplet}") if (root / d).is_dir())
    loaders = sorted(
        str(path.relative_to(root))
        for d in library_dirs
        for path in (root / d).glob("ld-linux*.so*")
        if path.is_file() and not path.is_symlink()
    )
    if not loaders:
        raise NoTwin(f"the twin holds no dynamic loader for {arch.spec.debian}")
    return Twin(root, loaders[0], library_dirs)


def make(
    target: Path,
    wanted: list[str],
    build_sources: str,
    cache: Path,
    fetch: Callable[[str], bytes],
    arch: Arch,
) -> Twin:
    """The twin of the image's versions of wanted (and the libraries they load), made once and kept."""
    versions = closure(installed((target / STATUS).read_text()), wanted)
    kept = cache / key(versions, arch.spec.debian)
    if kept.is_dir():
        os.utime(kept)  # used now: kept by prune
    else:
        located = locate(target, build_sources, versions, arch.spec.debian, fetch, cache)
        cache.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".twin-", dir=cache))
        try:
            tree = scratch / "root"
            tree.mkdir()
            for name, (url, digest) in sorted(located.items()):
                package = scratch / f"{name}.deb"
                package.write_bytes(_fetched(url, digest, fetch))
                # Unpacked only: no maintainer script runs.
                subprocess.run(["dpkg-deb", "-x", str(package), str(tree)], check=True)
                package.unlink()
            describe(tree, arch)  # a twin that cannot run is not kept
            (scratch / "versions").write_text("".join(f"{n} {v}\n" for n, v in sorted(versions.items())))
            try:
                scratch.rename(kept)  # whole or not at all
            except OSError:
                if not kept.is_dir():  # else a build alongside made the same twin first
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return describe(kept / "root", arch)


def prune(cache: Path) -> None:
    """Drop twins and indexes no build has used for a while (as the package cache
    does its packages), and what a build killed while making a twin left."""
    from tasks.system.aptcache import UNUSED_DAYS

    now = time.time()
    for path in [*cache.glob("*"), *cache.glob("indexes/*")]:
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        if path.name == "indexes" or not (age > UNUSED_DAYS * 86400 or (path.name.startswith(".") and age > 3600)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def directory(workdir: Path) -> Path:
    """Where the twins are kept, shared by every build."""
    return workdir / "cache" / "twins"


def host_arch() -> Arch:
    machine = platform.machine()
    for arch in Arch:
        if arch.spec.uname == machine:
            return arch
    raise NoTwin(f"no Debian architecture runs as {machine}")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "root":
        print(__doc__, file=sys.stderr)
        return 2
    from tasks.stages import aptlists

    cache = Path(os.environ["IMAGE_TWINS"])
    try:
        prune(cache)
        host = host_arch()
        twin = make(
            Path(os.environ["target"]),
            argv[1:],
            os.environ.get("IMAGE_BUILD_SOURCES", ""),
            cache,
            aptlists.fetcher(os.environ.get("IMAGE_APT_PROXY") or None),
            host,
        )
    except (NoTwin, OSError, subprocess.CalledProcessError, lzma.LZMAError) as error:
        print(f"twins: no twin of {' '.join(argv[1:])}: {error}", file=sys.stderr)
        return 1
    # For the build log: what runs natively, at which versions.
    versions = (twin.root.parent / "versions").read_text().split("\n")
    print(f"twins: {', '.join(v for v in versions if v)} as built for {host.spec.debian}", file=sys.stderr)
    print(twin.line())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
