"""tasks/reproduce.py's comparison, on small real disks: GPT, an ext4 root made
from a directory as a build makes it (tasks/stages/diskassembly.py), an EFI system
partition written with mtools; read without mounting anything (no root needed)."""

import os
import subprocess
from pathlib import Path

from tasks import reproduce
from tasks.model import arch
from tasks.stages import diskassembly, identity
from tasks.system.checksum import sha512_file

MIB = 1 << 20
EPOCH = "1700000000"


def make_disk(path: Path, tree: Path, tools: Path, esp_file: bytes = b"shim") -> Path:
    """A 48 MiB disk: partition 15 an 8 MiB ESP, partition 1 the ext4 root made from tree."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(48 * MIB)
    layout = f"label: gpt\nlabel-id: {identity.identifier('t', '1', 'disk')}\n"
    layout += (
        f"p15 : start=2048, size=16384, type={arch.ESP_PARTITION_TYPE}, uuid={identity.identifier('t', '1', 'esp')}\n"
    )
    layout += (
        f"p1 : start=18432, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid={identity.identifier('t', '1', 'r')}\n"
    )
    subprocess.run(["sfdisk", "--quiet", str(path)], input=layout, text=True, check=True)
    identifiers = {
        "IMAGE_FSUUID_ROOT": str(identity.identifier("t", "1", "fs")),
        "IMAGE_EXT4_HASH_SEED": str(identity.identifier("t", "1", "seed")),
        "IMAGE_SOURCE_DATE_EPOCH": EPOCH,
    }
    diskassembly.make_root(path, diskassembly.partitions(path, tools)[1], tree, tools, identifiers)
    # The times mtools gives what it makes, as a build sets them.
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH}
    esp = f"{path}@@{2048 * 512}"
    subprocess.run(["mformat", "-i", esp, "-T", "16384", "-N", "12345678", "::"], check=True, env=env)
    subprocess.run(["mmd", "-i", esp, "::/EFI"], check=True, env=env)
    shim = path.with_suffix(".shim")
    shim.write_bytes(esp_file)
    os.utime(shim, (int(EPOCH), int(EPOCH)))
    subprocess.run(["mcopy", "-m", "-i", esp, str(shim), "::/EFI/shimx64.efi"], check=True, env=env)
    return path


def tree(base: Path, motd: str = "hello\n", mtime: int = 1700000000) -> Path:
    (base / "etc").mkdir(parents=True)
    (base / "etc" / "motd").write_text(motd)
    (base / "usr" / "bin").mkdir(parents=True)
    (base / "usr" / "bin" / "tool").write_bytes(b"\x7fELF" + b"\0" * 100)
    (base / "usr" / "bin" / "tool").chmod(0o755)
    (base / "usr" / "bin" / "alias").symlink_to("tool")
    for path in [*base.rglob("*"), base]:
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    return base


def test_two_disks_of_one_tree_are_identical_bit_for_bit(tmp_path, pinned_tools):
    first = make_disk(tmp_path / "a" / "disk.raw", tree(tmp_path / "tree"), pinned_tools)
    # The same tree again, its files' change times now later: the pinned mke2fs clamps every time.
    os.utime(tmp_path / "tree" / "etc" / "motd", (int(EPOCH), int(EPOCH)))
    second = make_disk(tmp_path / "b" / "disk.raw", tmp_path / "tree", pinned_tools)
    report = reproduce.compare_images(first, second, pinned_tools)
    assert report["trees"] == "identical", report["tree_differences"]
    assert report["entries"] >= 6  # the tree, lost+found, and the ESP's directory and file
    assert report["disk"] == "identical", report["disk_differences"]
    assert report["disk_sha512"] == sha512_file(first) == sha512_file(second)
    assert f"disk SHA-512 {report['disk_sha512']}" in reproduce.render({**report, "cell": "c", "version": "1"})


def test_every_kind_of_difference_is_reported(tmp_path, pinned_tools):
    first = make_disk(tmp_path / "a" / "disk.raw", tree(tmp_path / "t1"), pinned_tools)
    other = tree(tmp_path / "t2", motd="hello, world\n")
    (other / "usr" / "bin" / "tool").chmod(0o700)
    (other / "etc" / "new").write_text("x")
    os.utime(other / "etc" / "new", (1700000000, 1700000000))
    os.utime(other / "etc", (1700000000, 1700000000))
    second = make_disk(tmp_path / "b" / "disk.raw", other, pinned_tools, esp_file=b"shim, rebuilt")
    report = reproduce.compare_images(first, second, pinned_tools)
    assert report["trees"] == "different"
    found = {d["path"]: d for d in report["tree_differences"]}
    assert found["/etc/motd"]["size"] == [6, 13] and "content" in found["/etc/motd"]
    assert found["/usr/bin/tool"]["mode"] == ["0o755", "0o700"] and "content" not in found["/usr/bin/tool"]
    assert found["/etc/new"] == {"path": "/etc/new", "only_in": "second"}
    assert "content" in found["ESP:/EFI/shimx64.efi"]
    # What differs inside the file: diffoscope when installed, else a line saying how to get it.
    assert found["/etc/motd"]["diffoscope"]
    assert report["disk"] == "different"
    assert set(report["disk_differences"]) >= {"partition 1: MiB differing", "partition 15: MiB differing"}
    text = reproduce.render({**report, "cell": "c", "version": "1"})
    assert "/etc/motd: size 6 -> 13" in text and "/etc/new: only in the second build" in text
