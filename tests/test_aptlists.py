"""Whether the base's package lists are the mirror's: a real (local) mirror over HTTP,
reached through the builder's real package proxy, and FAI's ROOTCMD without apt."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.stages import aptlists
from tasks.system.aptcache import PackageCache
from tests import debmirror
from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent
WITHOUT_APT = REPO / "fai_config" / "lib" / "rootcmd-without-apt"


@pytest.mark.parametrize(
    "url, name",
    [
        # The names apt gives them on Debian's own images (and in the bases).
        ("http://deb.debian.org/debian/dists/bookworm/InRelease", "deb.debian.org_debian_dists_bookworm_InRelease"),
        (
            "http://deb.debian.org/debian-security/dists/bookworm-security/InRelease",
            "deb.debian.org_debian-security_dists_bookworm-security_InRelease",
        ),
        # A port stays, a user goes, and what apt quotes is quoted.
        (
            "http://user@mirror.example:8080/deb_ian/dists/sid/InRelease",
            "mirror.example:8080_deb%5fian_dists_sid_InRelease",
        ),
    ],
)
def test_list_names_are_apts(url, name):
    assert aptlists.list_name(url) == name


def test_suites_are_the_deb_lines():
    sources = (
        "deb http://a/debian bookworm main\n# deb http://b/debian sid main\ndeb-src http://a/debian bookworm main\n"
    )
    sources += "deb http://a/debian-security bookworm-security main contrib\n"
    assert aptlists.suites(sources) == [
        ("http://a/debian", "bookworm"),
        ("http://a/debian-security", "bookworm-security"),
    ]
    security = aptlists.Source("http://a/debian-security", "bookworm-security", ("main", "contrib"))
    assert aptlists.sources(sources)[1] == security


SUITES = ("bookworm", "bookworm-updates")


@pytest.fixture
def mirror(tmp_path):
    """A mirror with two suites' InRelease, and a base tree holding the same ones."""
    root = tmp_path / "mirror"
    for suite in SUITES:
        release = root / "debian" / "dists" / suite / "InRelease"
        release.parent.mkdir(parents=True)
        release.write_text(f"Origin: Debian\nSuite: {suite}\nDate: Sat, 28 Nov 2026 00:00:00 UTC\n")
    with debmirror.served(root) as served:
        url = f"{served}/debian"
        target = tmp_path / "target"
        (target / aptlists.LISTS).mkdir(parents=True)
        for suite in SUITES:
            kept = target / aptlists.LISTS / aptlists.list_name(aptlists.release_url(url, suite))
            kept.write_bytes((root / "debian" / "dists" / suite / "InRelease").read_bytes())
        yield root, target, "\n".join(f"deb {url} {suite} main" for suite in SUITES)


def test_the_bases_lists_are_current_through_the_proxy(mirror, tmp_path):
    _, target, sources = mirror
    with PackageCache(tmp_path / "cache") as cache:
        assert aptlists.differences(target, sources, aptlists.fetcher(cache.url)) == []
        assert cache.stats.passed == len(SUITES)  # fetched through the proxy, as apt would


def test_a_moved_on_suite_is_named(mirror):
    root, target, sources = mirror
    release = root / "debian" / "dists" / "bookworm-updates" / "InRelease"
    release.write_text(release.read_text().replace("00:00:00", "06:00:00"))
    assert aptlists.differences(target, sources, aptlists.fetcher(None)) == [
        "bookworm-updates: the mirror's InRelease is not the base's (the archive moved on)"
    ]


def test_a_list_the_base_lacks_is_named(mirror):
    _, target, sources = mirror
    for kept in (target / aptlists.LISTS).glob("*_bookworm_InRelease"):
        kept.unlink()
    found = aptlists.differences(target, sources, aptlists.fetcher(None))
    assert len(found) == 1 and found[0].startswith("bookworm: the base has no ") and found[0].endswith("_InRelease")


def test_a_release_the_mirror_does_not_have_is_no_match(mirror):
    root, target, sources = mirror
    (root / "debian" / "dists" / "bookworm" / "InRelease").unlink()
    found = aptlists.differences(target, sources, aptlists.fetcher(None))
    assert len(found) == 1 and found[0].startswith("bookworm: http://") and "could not be fetched (404" in found[0]


def test_a_closed_port_is_no_match(mirror):
    _, target, _ = mirror
    url = f"http://127.0.0.1:{free_port()}/debian"
    kept = target / aptlists.LISTS / aptlists.list_name(aptlists.release_url(url, "sid"))
    kept.write_text("Suite: sid\n")
    found = aptlists.differences(target, f"deb {url} sid main", aptlists.fetcher(None))
    assert len(found) == 1 and found[0].startswith(f"sid: {url}/dists/sid/InRelease could not be fetched")


def test_no_sources_is_no_match(tmp_path):
    assert aptlists.differences(tmp_path, "", aptlists.fetcher(None)) == ["the build has no apt sources"]


def run_main(target, sources, proxy=""):
    env = {**os.environ, "target": str(target), "IMAGE_BUILD_SOURCES": sources, "IMAGE_APT_PROXY": proxy}
    return subprocess.run(
        [sys.executable, "-m", "tasks.stages.aptlists", "current"], env=env, cwd=REPO, capture_output=True, text=True
    )


def test_the_hooks_command_answers_with_its_exit_status(mirror, tmp_path):
    root, target, sources = mirror
    with PackageCache(tmp_path / "cache") as cache:
        current = run_main(target, sources, cache.url)
        (root / "debian" / "dists" / "bookworm" / "InRelease").write_text("Suite: bookworm\nmoved on\n")
        moved = run_main(target, sources, cache.url)
    assert (current.returncode, current.stdout) == (0, "aptlists: the base's package lists are the mirror's\n")
    assert moved.returncode == 1
    assert moved.stdout == "aptlists: bookworm: the mirror's InRelease is not the base's (the archive moved on)\n"


def test_fais_rootcmd_without_apt_leaves_out_apt_only():
    """FAI's updatebase calls `$ROOTCMD apt-get ...` and `$ROOTCMD dpkg -C`: only apt is left
    out; the rest runs through FAI's own ROOTCMD, a command line ("chroot /target", here env)."""
    env = {**os.environ, "UPDATEBASE_ROOTCMD": "env WHERE=image"}
    apt = subprocess.run([WITHOUT_APT, "apt-get", "-y", "dist-upgrade"], env=env, capture_output=True, text=True)
    other = subprocess.run(
        [WITHOUT_APT, "sh", "-c", "echo ran in the $WHERE; exit 3"], env=env, capture_output=True, text=True
    )
    assert (apt.returncode, apt.stdout) == (
        0,
        "Left out: apt-get -y dist-upgrade (the base's package lists are the mirror's)\n",
    )
    assert (other.returncode, other.stdout) == (3, "ran in the image\n")
