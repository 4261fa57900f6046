"""Several writers to one storage: the storage's own lock, on every backend.

Two publishers started together (two processes, released by one barrier) into
one storage and version, many rounds: no entry of either is ever lost from
SHA512SUMS. Then what happens to the lock itself: a writer waits for the one
that holds it, a dead writer's lock is taken over once its lease runs out,
a writer that lost its lock writes nothing more, and a WebDAV server without
LOCK is refused in one line.
"""

import multiprocessing
import threading

import boto3
import pytest

from tasks.stages import manifest, provenance
from tasks.stages import publish as publication
from tasks.storage import PublishFailed, backend
from tasks.storage.backend import Holder

from . import servers
from .conftest import fake_outputs
from .stores import dav_store, local_store, s3_store
from .test_storage import FAST, SUFFIXES

ROUNDS = 20
CELLS = ("bookworm-nocloud-amd64", "bookworm-genericcloud-amd64")
pytestmark = pytest.mark.skipif(not servers.have_nginx(), reason="nginx with WebDAV is installed by tools/setup-host")


@pytest.fixture(params=["file", "webdav", "s3"])
def stores(request, tmp_path, moto, monkeypatch):
    """A new, empty storage for each round, all of one backend."""
    if request.param == "file":
        yield lambda n: local_store(tmp_path / f"round-{n}")
    elif request.param == "webdav":
        nginx = servers.Nginx(tmp_path / "nginx").start()
        yield lambda n: dav_store(nginx, f"round-{n}")
        nginx.stop()
    else:
        yield lambda n: s3_store(moto, monkeypatch, bucket=f"writers-{n}")


def _publish_after(barrier, cell, files, location) -> None:
    barrier.wait(timeout=60)
    publication.publish(cell, files, location, FAST)


def test_two_writers_started_together_lose_no_entry(repo_matrix, stores, tmp_path):
    made = []
    for name in CELLS:
        cell = repo_matrix.cell(name)
        files = fake_outputs(tmp_path / "build", cell)
        manifest.write(cell, files)
        provenance.write(cell, files)
        made.append((cell, files))
    fork = multiprocessing.get_context("fork")
    for n in range(ROUNDS):
        store = stores(n)
        barrier = fork.Barrier(len(made))
        writers = [
            fork.Process(target=_publish_after, args=(barrier, cell, files, store.location)) for cell, files in made
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(120)
        assert [w.exitcode for w in writers] == [0, 0], f"round {n}"
        listed = store.sums("bookworm/daily/20261125-1200")
        for cell, _ in made:
            mine = [name for name in listed if name.startswith(cell.image_name("20261125-1200") + ".")]
            assert len(mine) == len(SUFFIXES), f"round {n}: SHA512SUMS lists {len(mine)} of {cell.name}'s files"


def test_a_writer_waits_for_the_one_that_holds_the_lock(nocloud, tmp_path, monkeypatch):
    cell, files = nocloud
    store = local_store(tmp_path)
    holder = store.location.open()
    waiting = threading.Event()
    monkeypatch.setattr("tasks.storage.local.wait_announced", lambda name, who: waiting.set())
    failures = []

    def second_writer():
        try:
            publication.publish(cell, files, store.location, FAST)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            failures.append(error)

    with holder.locked("the first writer"):
        writer = threading.Thread(target=second_writer)
        writer.start()
        assert waiting.wait(30), "the second writer waits"
        assert store.read("bookworm/daily/latest") is None, "and writes nothing meanwhile"
    writer.join(60)
    assert not failures and store.read("bookworm/daily/latest") == b"20261125-1200\n"


def test_a_dead_writers_lock_is_taken_over_after_its_lease(nocloud, moto, monkeypatch, capsys):
    cell, files = nocloud
    store = s3_store(moto, monkeypatch, bucket="stale-lock")
    client = boto3.client("s3")
    # What a writer killed while it held the lock leaves behind.
    client.put_object(Bucket="stale-lock", Key="debian/.lock", Body=Holder.me("a killed publication").to_bytes())
    monkeypatch.setattr(backend.Backend, "lease_seconds", 0.5)
    publication.publish(cell, files, store.location, FAST)
    out = capsys.readouterr().out
    assert "waiting for the storage lock, held by a killed publication" in out
    assert "took over a storage lock not renewed for" in out
    assert store.read("bookworm/daily/latest") == b"20261125-1200\n"
    assert store.read(".lock") is None, "released when done"


def test_a_writer_that_lost_its_lock_writes_nothing_more(moto, monkeypatch):
    store = s3_store(moto, monkeypatch, bucket="lost-lock")
    monkeypatch.setattr(backend.Backend, "lease_seconds", 0.4)
    storage = store.location.open()
    with pytest.raises(PublishFailed, match="lost the storage lock .another writer took it over"):
        with storage.locked("a slow publication"):
            # Another writer took it over (it judged this one dead).
            boto3.client("s3").put_object(Bucket="lost-lock", Key="debian/.lock", Body=b"someone else")
            lease = storage._lease
            assert lease is not None
            lease._thread.join(30)  # the renewal that finds it taken ends the lease's thread
            storage.put_text_atomically("bookworm/daily/latest", "20261125-1200\n")
    assert store.read("bookworm/daily/latest") is None
    assert store.read(".lock") == b"someone else", "the other writer's lock is left alone"


def test_a_webdav_server_without_lock_is_refused_in_one_line(nocloud, tmp_path):
    cell, files = nocloud
    nginx = servers.Nginx(tmp_path / "nginx", locking=False).start()
    try:
        with pytest.raises(PublishFailed) as caught:
            publication.publish(cell, files, dav_store(nginx).location, FAST)
    finally:
        nginx.stop()
    assert "does not take WebDAV's LOCK (HTTP 405)" in str(caught.value) and "\n" not in str(caught.value)
    assert not (nginx.root / "images" / "bookworm").exists(), "nothing was written"
