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
        """Like Debian's mirrors here: no Last-Modified, and If-Modified-Since is ignored."""

        def log_message(self, *args):
            served.append(self.path)

        def send_head(self):
            del self.headers["If-Modified-Since"]
            return super().send_head()

        def send_header(self, keyword, value):
            if keyword != "Last-Modified":
                super().send_header(keyword, value)

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


def test_a_release_file_is_dated_by_its_date_field_and_not_sent_again_to_who_has_it(mirror, tmp_path):
    """The mirror sends InRelease without Last-Modified; the proxy dates it by its signed Date field
    and answers 304 to a client that has that very file, asking the mirror every time."""
    url, root, served = mirror
    inrelease = root / "debian/dists/bookworm/InRelease"
    inrelease.write_text("Suite: bookworm\nDate: Sun, 22 Nov 2026 10:05:07 UTC\n")
    index = f"{url}/dists/bookworm/InRelease"
    with PackageCache(tmp_path / "cache") as cache:
        first = get(cache, index)
        assert first.status_code == 200 and first.text == inrelease.read_text()
        assert first.headers["Last-Modified"] == "Sun, 22 Nov 2026 10:05:07 GMT"
        again = requests.get(
            index,
            proxies={"http": cache.url},
            timeout=10,
            headers={"If-Modified-Since": first.headers["Last-Modified"]},
        )
        assert again.status_code == 304 and again.content == b""
        # Any other time (apt's file from elsewhere) gets the file.
        other = requests.get(
            index,
            proxies={"http": cache.url},
            timeout=10,
            headers={"If-Modified-Since": "Mon, 23 Nov 2026 10:05:07 GMT"},
        )
        assert other.status_code == 200 and other.text == inrelease.read_text()
        # The mirror publishes anew: the client that had the old one gets the new one.
        inrelease.write_text("Suite: bookworm\nDate: Sun, 22 Nov 2026 16:00:00 UTC\n")
        newer = requests.get(
            index,
            proxies={"http": cache.url},
            timeout=10,
            headers={"If-Modified-Since": first.headers["Last-Modified"]},
        )
        assert newer.status_code == 200 and "16:00:00" in newer.text
        assert newer.headers["Last-Modified"] == "Sun, 22 Nov 2026 16:00:00 GMT"
        # Without a Date field it passes as the mirror sent it, undated.
        inrelease.write_text("Suite: bookworm\n")
        undated = requests.get(
            index,
            proxies={"http": cache.url},
            timeout=10,
            headers={"If-Modified-Since": first.headers["Last-Modified"]},
        )
        assert undated.status_code == 200 and undated.text == "Suite: bookworm\n"
    assert [p for p in served if "InRelease" in p] == ["/debian/dists/bookworm/InRelease"] * 5, "always asked"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://deb.debian.org/debian/dists/bookworm/InRelease", True),
        ("http://deb.debian.org/debian-security/dists/bookworm-security/Release", True),
        ("http://deb.debian.org/debian/dists/bookworm/Release.gpg", False),
        ("http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/Packages.xz", False),
        ("http://deb.debian.org/debian/pool/main/r/release/InRelease.deb", False),
    ],
)
def test_what_is_a_release_file(url, expected):
    assert aptcache.release_file(url) is expected
