"""The package cache: a real proxy in front of a real (local) HTTP mirror."""

import http.server
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
import requests

from tasks.system import aptcache
from tasks.system.aptcache import PackageCache, cacheable


@pytest.fixture
def mirror(tmp_path):
    """A local 'archive' over HTTP that counts the requests it serves."""
    root = tmp_path / "mirror"
    (root / "debian/pool/main/h").mkdir(parents=True)
    (root / "debian/dists/bookworm").mkdir(parents=True)
    (root / "debian/pool/main/h/hello_2.10-3_amd64.deb").write_bytes(b"deb" * 100000)
    (root / "debian/dists/bookworm/InRelease").write_text("Suite: bookworm\n")
    served = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            served.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/debian", root, served
    server.shutdown()
    server.server_close()


def get(cache, url):
    return requests.get(url, proxies={"http": cache.url}, timeout=10)


def test_packages_are_fetched_once_and_indexes_always(mirror, tmp_path):
    url, root, served = mirror
    deb = f"{url}/pool/main/h/hello_2.10-3_amd64.deb"
    with PackageCache(tmp_path / "cache") as cache:
        first, second = get(cache, deb), get(cache, deb)
        index = [get(cache, f"{url}/dists/bookworm/InRelease") for _ in range(2)]
    assert first.content == second.content == (root / "debian/pool/main/h/hello_2.10-3_amd64.deb").read_bytes()
    assert [p for p in served if p.endswith(".deb")] == ["/debian/pool/main/h/hello_2.10-3_amd64.deb"]
    assert all(r.text == "Suite: bookworm\n" for r in index)
    assert [p for p in served if "InRelease" in p] == ["/debian/dists/bookworm/InRelease"] * 2
    assert (cache.stats.hits, cache.stats.misses, cache.stats.passed) == (1, 1, 2)
    assert (tmp_path / "cache" / "hello_2.10-3_amd64.deb").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["hello_2.10-3_amd64.deb"]


def test_a_package_asked_again_as_soon_as_it_arrived_comes_from_the_cache(mirror, tmp_path, monkeypatch):
    """The client has the whole package only once it is in the cache (a slow rename shows the race)."""
    url, _, served = mirror
    deb = f"{url}/pool/main/h/hello_2.10-3_amd64.deb"
    replace = aptcache.os.replace

    def slow_replace(source, target):
        time.sleep(0.3)
        replace(source, target)

    monkeypatch.setattr(aptcache.os, "replace", slow_replace)
    with PackageCache(tmp_path / "cache") as cache:
        for _ in range(2):
            get(cache, deb)
    assert [p for p in served if p.endswith(".deb")] == ["/debian/pool/main/h/hello_2.10-3_amd64.deb"]
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)


def test_missing_files_and_dead_mirrors_are_errors_not_cache_entries(mirror, tmp_path):
    url, _, _ = mirror
    with PackageCache(tmp_path / "cache") as cache:
        assert get(cache, f"{url}/pool/main/n/nothing_1_amd64.deb").status_code == 404
        assert get(cache, "http://127.0.0.1:9/debian/pool/main/x/x_1_all.deb").status_code == 502
    assert list((tmp_path / "cache").iterdir()) == []


def test_builds_side_by_side_share_the_cache(mirror, tmp_path):
    url, root, _ = mirror
    deb = f"{url}/pool/main/h/hello_2.10-3_amd64.deb"
    with PackageCache(tmp_path / "cache") as one, PackageCache(tmp_path / "cache") as two:
        with ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(lambda i: get(one if i % 2 else two, deb).content, range(16)))
    assert set(bodies) == {(root / "debian/pool/main/h/hello_2.10-3_amd64.deb").read_bytes()}
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["hello_2.10-3_amd64.deb"]


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://deb.debian.org/debian/pool/main/s/systemd/udev_252.39-1~deb12u2_amd64.deb", True),
        ("http://deb.debian.org/debian-security/pool/updates/main/o/openssh/openssh-server_9.2_amd64.deb", True),
        ("http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/Packages.xz", False),
        ("http://deb.debian.org/debian/dists/bookworm/InRelease", False),
    ],
)
def test_what_is_cacheable(url, expected):
    assert cacheable(url) is expected
