"""The image's own packages built for the host (tasks/stages/twins.py): made from a real
local mirror of real packages, fetched through the builder's real package proxy."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.model.arch import Arch
from tasks.stages import aptlists, twins
from tasks.system.aptcache import UNUSED_DAYS, PackageCache
from tests import debmirror

REPO = Path(__file__).resolve().parent.parent
HOST = Arch.AMD64
LIBS = debmirror.LIBS
pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="the twins are made for an amd64 host")


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """The suite, built once for the module (each test alters a copy)."""
    root = tmp_path_factory.mktemp("published")
    debmirror.publish(root / "debian", "trixie", debmirror.program_and_libraries())
    return root


@pytest.fixture
def mirror(published, tmp_path):
    """The suite on a mirror over HTTP, and an arm64 image whose status and apt lists are the suite's."""
    root = tmp_path / "mirror"
    shutil.copytree(published, root)
    with debmirror.served(root) as url:
        sources = f"deb {url}/debian trixie main"
        target = tmp_path / "target"
        debmirror.image_of(target, f"{url}/debian", "trixie", debmirror.program_and_libraries())
        yield root, target, sources


def make(target: Path, sources: str, cache: Path, wanted=("tool",), fetch=None) -> twins.Twin:
    return twins.make(target, list(wanted), sources, cache, fetch or aptlists.fetcher(None), HOST)


def test_dependencies_name_every_alternative_without_versions_or_qualifiers():
    fields = {"Pre-Depends": "libc6 (>= 2.38)", "Depends": "libfoo1 (= 2.0-1) | libbar1, perl:any,\n tar"}
    assert twins.dependency_names(fields) == ["libc6", "libfoo1", "libbar1", "perl", "tar"]


def test_the_closure_holds_the_libraries_the_wanted_packages_load(mirror):
    _, target, _ = mirror
    installed = twins.installed((target / "var/lib/dpkg/status").read_text())
    assert twins.closure(installed, ["tool", "not-installed"]) == {
        "tool": "1.0-1",
        "libfoo1": "2.0-1",
        "libc6": "2.41-1",
    }
    with pytest.raises(twins.NoTwin, match="none of not-installed"):
        twins.closure(installed, ["not-installed"])


def test_a_twin_runs_the_image_versions_of_its_programs_and_is_made_once(mirror, tmp_path):
    root, target, sources = mirror
    cache = tmp_path / "twins"
    with PackageCache(tmp_path / "packages") as proxy:
        twin = make(target, sources, cache, fetch=aptlists.fetcher(proxy.url))
    assert twin.loader == f"{LIBS}/ld-linux-x86-64.so.2" and twin.library_dirs == (LIBS,)
    assert (twin.root.parent / "versions").read_text() == "libc6 2.41-1\nlibfoo1 2.0-1\ntool 1.0-1\n"
    assert not (twin.root / "usr/bin/which").exists() and not (twin.root / LIBS / "libunused.txt").exists()
    ran = subprocess.run(
        [twin.root / twin.loader, "--library-path", twin.root / LIBS, twin.root / "usr/bin/tool", "twin"],
        capture_output=True,
        text=True,
    )
    assert ran.stdout == "twin\n"

    def offline(url: str) -> bytes:
        raise AssertionError(f"fetched {url} again")

    assert make(target, sources, cache, fetch=offline) == twin


def test_a_version_the_mirror_lacks_is_no_twin(mirror, tmp_path):
    _, target, sources = mirror
    status = target / "var/lib/dpkg/status"
    status.write_text(status.read_text().replace("Version: 2.0-1", "Version: 2.0-1+b1"))
    with pytest.raises(twins.NoTwin, match=r"the mirror has no libfoo1 2\.0-1\+b1 for amd64"):
        make(target, sources, tmp_path / "twins")
    assert [p.name for p in (tmp_path / "twins").iterdir()] == ["indexes"]


@pytest.mark.parametrize("altered", ["dists/trixie/main/binary-amd64/Packages.xz", "pool/main/libfoo1_2.0-1_amd64.deb"])
def test_what_differs_from_the_archives_checksums_is_no_twin(mirror, tmp_path, altered):
    root, target, sources = mirror
    path = root / "debian" / altered
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(twins.NoTwin, match="is not what the archive's checksums say"):
        make(target, sources, tmp_path / "twins")
    assert not list((tmp_path / "twins").glob("amd64-*")) and not list((tmp_path / "twins").glob(".twin-*"))


def test_a_suite_the_image_lists_nothing_of_is_no_twin(mirror, tmp_path):
    _, target, sources = mirror
    for kept in (target / aptlists.LISTS).iterdir():
        kept.unlink()
    with pytest.raises(twins.NoTwin, match="the image's apt lists have no"):
        make(target, sources, tmp_path / "twins")


def test_a_twin_a_build_alongside_put_in_place_first_is_used(mirror, tmp_path, monkeypatch):
    _, target, sources = mirror
    cache = tmp_path / "twins"
    kept = cache / twins.key({"tool": "1.0-1", "libfoo1": "2.0-1", "libc6": "2.41-1"}, "amd64")
    describe = twins.describe

    def alongside(root, arch):  # while this build makes its twin, the other's lands
        if root.parent.name.startswith(".twin-") and not kept.exists():
            shutil.copytree(root.parent, kept, symlinks=True)
        return describe(root, arch)

    monkeypatch.setattr(twins, "describe", alongside)
    assert make(target, sources, cache).root == kept / "root"
    assert not list(cache.glob(".twin-*"))


def test_unused_twins_and_a_killed_builds_leftovers_are_dropped(tmp_path):
    cache = tmp_path / "twins"
    old = time.time() - (UNUSED_DAYS + 1) * 86400
    for name in ("amd64-old", "amd64-fresh", ".twin-killed", ".twin-making"):
        (cache / name / "root").mkdir(parents=True)
    (cache / "indexes").mkdir()
    (cache / "indexes" / "old").write_bytes(b"")
    (cache / "indexes" / "fresh").write_bytes(b"")
    for path in (cache / "amd64-old", cache / "indexes" / "old", cache / "indexes"):
        os.utime(path, (old, old))
    hour_ago = time.time() - 3700
    os.utime(cache / ".twin-killed", (hour_ago, hour_ago))
    twins.prune(cache)
    assert sorted(p.name for p in cache.iterdir()) == [".twin-making", "amd64-fresh", "indexes"]
    assert [p.name for p in (cache / "indexes").iterdir()] == ["fresh"]


def test_the_command_prints_the_twin_or_why_there_is_none(mirror, tmp_path):
    _, target, sources = mirror
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "target": str(target),
        "IMAGE_BUILD_SOURCES": sources,
        "IMAGE_TWINS": str(tmp_path / "twins"),
    }
    command = [sys.executable, "-m", "tasks.stages.twins", "root"]
    made = subprocess.run([*command, "tool"], env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    root, loader, libs = made.stdout.split()
    assert Path(root, loader).is_file() and libs == LIBS
    assert made.stderr == "twins: libc6 2.41-1, libfoo1 2.0-1, tool 1.0-1 as built for amd64\n"
    missing = subprocess.run([*command, "absent"], env=env, capture_output=True, text=True)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == "twins: no twin of absent: the image has none of absent\n"
