"""The xxh3 file checker, the kept SHA-256 of a shared base, and the CPU slots that parallel stages share."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.system import checksum, cpu
from tasks.system.checksum import XXH3Checker, xxh3_file

REPO = Path(__file__).resolve().parent.parent


def sparse(path, size, pieces):
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)


def test_xxh3_sees_data_and_where_it_lies(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    sparse(a, 64 << 20, [(0, b"x" * 4096), (32 << 20, b"y" * 4096)])
    sparse(b, 64 << 20, [(0, b"x" * 4096), (32 << 20, b"y" * 4096)])
    sparse(c, 64 << 20, [(0, b"x" * 4096), (16 << 20, b"y" * 4096)])  # same bytes, elsewhere
    assert xxh3_file(a) == xxh3_file(b) != xxh3_file(c)
    with open(b, "r+b") as f:
        f.seek(32 << 20)
        f.write(b"z")
    assert xxh3_file(a) != xxh3_file(b)


@pytest.mark.parametrize("layout", ["hole-data-hole", "data-hole-data", "all-hole", "all-data"])
def test_sparse_sha512_is_the_whole_files_sha512(tmp_path, layout):
    path = tmp_path / "disk.raw"
    chunk = checksum.CHUNK
    with open(path, "wb") as f:
        if layout == "all-data":
            f.write(os.urandom(chunk + 123))
        elif layout == "data-hole-data":
            f.write(os.urandom(5000))
            f.seek(3 * chunk + 77)
            f.write(os.urandom(chunk + 1))
        elif layout == "hole-data-hole":
            f.seek(2 * chunk + 4096)
            f.write(os.urandom(8192))
            f.truncate(5 * chunk + 13)
        else:
            f.truncate(2 * chunk + 5)
    assert checksum.sha512_sparse(path) == hashlib.sha512(path.read_bytes()).hexdigest()


def test_checker_hashes_a_file_once_per_run(tmp_path):
    path = tmp_path / "disk.raw"
    sparse(path, 8 << 20, [(0, os.urandom(4096))])
    checker = XXH3Checker()
    before = XXH3Checker.hash_count
    state = checker.get_state(str(path), None)
    for _ in range(3):  # compress and boottest both depend on disk.raw
        assert checker.get_state(str(path), None) == state
    assert XXH3Checker.hash_count == before + 1
    # unchanged mtime: unchanged, without hashing
    assert not checker.check_modified(str(path), os.stat(path), state)
    # same size, new content and mtime: modified
    time.sleep(0.01)
    with open(path, "r+b") as f:
        f.write(b"changed")
    assert checker.check_modified(str(path), os.stat(path), state)
    # touched, same content: not modified
    sparse(path, 8 << 20, [(0, b"a")])
    state = checker.get_state(str(path), None)
    os.utime(path, (1, 1))
    assert not checker.check_modified(str(path), os.stat(path), state)


def test_a_kept_sha256_is_hashed_once_then_read(tmp_path, monkeypatch):
    base = tmp_path / "bookworm-amd64.tar.zst"
    base.write_bytes(os.urandom(100_000))
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    assert checksum.sha256_kept(base) == digest
    assert json.loads(checksum.kept_sha256_path(base).read_text())["sha256"] == digest

    def no_hashing(path):
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr(checksum, "sha256_file", no_hashing)
    assert checksum.sha256_kept(base) == digest


def _replace(path: Path, data: bytes) -> None:
    """As the base stage writes a base: a new file renamed over the old one."""
    new = path.with_name("new")
    new.write_bytes(data)
    os.replace(new, path)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda path: _replace(path, os.urandom(100_000)), id="replaced, same size"),
        pytest.param(lambda path: path.write_bytes(os.urandom(50_000)), id="rewritten in place, another size"),
        pytest.param(lambda path: os.utime(path, ns=(1, 1)), id="mtime changed"),
        pytest.param(lambda path: checksum.kept_sha256_path(path).write_text("{not json"), id="record unreadable"),
        pytest.param(lambda path: checksum.kept_sha256_path(path).write_text("[1, 2]"), id="record not a mapping"),
    ],
)
def test_a_kept_sha256_follows_the_file(tmp_path, change):
    base = tmp_path / "bookworm-amd64.tar.zst"
    base.write_bytes(os.urandom(100_000))
    checksum.sha256_kept(base)
    change(base)
    assert checksum.sha256_kept(base) == hashlib.sha256(base.read_bytes()).hexdigest()
    record = json.loads(checksum.kept_sha256_path(base).read_text())
    assert record["sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    assert record["mtime_ns"] == base.stat().st_mtime_ns


def test_slots_share_the_cores_between_processes(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import sys, time
sys.path.insert(0, {str(REPO)!r})
from tasks.system import cpu
with cpu.slots(__import__('pathlib').Path({str(tmp_path)!r}), want=3, total=4) as got:
    print(got, flush=True)
    time.sleep(30)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "3"
        with cpu.slots(tmp_path, want=4, total=4) as got:
            assert got == 1, "one core left for us"
    finally:
        holder.kill()
        holder.wait()
    # the holder's slots were released by the kernel when it died
    with cpu.slots(tmp_path, want=4, total=4) as got:
        assert got == 4


def test_slots_not_kept_go_back_at_once(tmp_path):
    with cpu.slots(tmp_path, want=4, total=4, keep=lambda got: got - 1) as got:
        assert got == 3
        with cpu.slots(tmp_path, want=4, total=4) as others:
            assert others == 1, "the slot not kept is free"
    with cpu.slots(tmp_path, want=2, total=4, keep=lambda got: 0) as got:
        assert got == 1, "at least one is kept"


def test_slots_wait_for_a_free_core(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "POLL_SECONDS", 0.05)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import sys, time
sys.path.insert(0, {str(REPO)!r})
from tasks.system import cpu
with cpu.slots(__import__('pathlib').Path({str(tmp_path)!r}), want=2, total=2) as got:
    print(got, flush=True)
    time.sleep(1)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "2"
    started = time.monotonic()
    with cpu.slots(tmp_path, want=2, total=2) as got:
        assert got >= 1
    assert time.monotonic() - started > 0.5, "it waited for the holder to finish"
    holder.wait()
