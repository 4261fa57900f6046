"""tasks/stages/stepcache.py on real trees: what a step changed is kept with real tar,
and restored onto a copy of the tree it began from, the copy then equal to the tree
the step made; the key follows what the step reads and nothing else."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tasks.stages import stepcache

FACTS = {"arch": "amd64", "time": "1700000000"}
PACKAGE_TIME = 1_600_000_000_123_456_789


def make_tree(root: Path) -> None:
    (root / "etc/cloud").mkdir(parents=True)
    (root / "etc/cloud/cloud.cfg").write_text("datasource_list: [None]\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"\x7fELF tool")
    (root / "usr/bin/tool").chmod(0o755)
    (root / "usr/share/old").mkdir(parents=True)
    (root / "usr/share/old/file").write_text("old\n")
    (root / "usr/lib").mkdir()
    (root / "usr/lib/was-a-dir").mkdir()
    (root / "usr/lib/was-a-dir/inside").write_text("inside\n")
    (root / "var/log").mkdir(parents=True)
    (root / "var/log/dpkg.log").write_text("2026-01-01 install\n")
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("Package: base-files\n")
    (root / "var/lib/dpkg/lock").touch()
    (root / "var/tmp").mkdir()
    (root / "tmp").mkdir()
    (root / "tmp/build-scratch").write_text("not the tree's\n")


def run_step(root: Path) -> None:
    """What a package installation does: new, rewritten, replaced, removed, re-typed files,
    and a file unpacked with its package's time."""
    (root / "usr/lib/new/deep").mkdir(parents=True)
    (root / "usr/lib/new/deep/lib.so").write_bytes(b"\x7fELF lib")
    os.chown(root / "usr/lib/new/deep/lib.so", 0, 4)
    with open(root / "var/lib/dpkg/status", "a") as status:  # in place: same inode
        status.write("Package: cloud-init\n")
    with open(root / "var/lib/dpkg/lock", "r+"):  # opened, not replaced: only its time changes
        os.utime(root / "var/lib/dpkg/lock")
    (root / "usr/bin/tool").chmod(0o4755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-again")
    (root / "usr/bin/link").symlink_to("tool")
    shutil.rmtree(root / "usr/share/old")
    shutil.rmtree(root / "usr/lib/was-a-dir")
    (root / "usr/lib/was-a-dir").symlink_to("new")
    (root / "var/tmp/scratch").write_text("the step's scratch, removed by the build\n")
    (root / "var/log/dpkg.log").write_text("2026-01-01 install\n2026-11-27 install cloud-init\n")
    os.setxattr(root / "usr/lib/new/deep/lib.so", "user.stepcache", b"kept")
    (root / "usr/bin/packaged").write_text("from a .deb\n")
    os.utime(root / "usr/bin/packaged", ns=(PACKAGE_TIME, PACKAGE_TIME))


def listing(root: Path, times: bool = True) -> dict[str, tuple]:
    """Every path (but under tmp/ and var/tmp/) with its type, mode, owner, links, content and time."""
    found = {}
    for relative, info in stepcache.walk(root):
        path = root / relative
        content = (
            path.read_bytes()
            if stat.S_ISREG(info.st_mode)
            else os.readlink(path)
            if stat.S_ISLNK(info.st_mode)
            else None
        )
        xattrs = {name: os.getxattr(path, name) for name in os.listxattr(path)} if not path.is_symlink() else {}
        mtime = None if stat.S_ISLNK(info.st_mode) or not times else info.st_mtime_ns
        found[relative] = (info.st_mode, info.st_uid, info.st_gid, info.st_nlink, mtime, content, xattrs)
    return found


@pytest.fixture
def trees(tmp_path):
    """A tree, and a copy of it (times, owners and all) as another build would begin from."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    make_tree(first)
    subprocess.run(["cp", "-a", f"{first}/.", str(second)], check=True)
    return first, second, tmp_path / "cache"


def build(target: Path, cache: Path | None, facts=FACTS) -> stepcache.Build:
    return stepcache.Build(target, cache, facts)


def test_the_kept_step_restored_on_a_copy_gives_the_tree_the_step_made(trees, tmp_path):
    first, second, cache = trees
    inputs = tmp_path / "package_config"
    inputs.write_text("PACKAGES install\ncloud-init\n")
    assert stepcache.begin(build(first, cache), "packages", [inputs]) == "missing"
    run_step(first)
    outcome = stepcache.save(build(first, cache), "packages")
    assert outcome.endswith("4 removed"), outcome  # usr/share/old, the directory now a link, a file in each
    made, made_times = listing(first, times=False), listing(first)

    restoring = time.time_ns()
    assert stepcache.begin(build(second, cache), "packages", [inputs]) == "restored"
    assert listing(second, times=False) == made
    # What the step wrote is stamped as if written now (the build clamps it to its own
    # time at its end); what came with its package's time, and what it left alone, keep theirs.
    stamped = {path for path, entry in listing(second).items() if entry != made_times[path]}
    assert "usr/lib/new/deep/lib.so" in stamped and "var/lib/dpkg/status" in stamped
    assert all(os.lstat(second / path).st_mtime_ns >= restoring for path in stamped)
    assert os.lstat(second / "usr/bin/packaged").st_mtime_ns == PACKAGE_TIME
    assert "etc/hosts" not in stamped and "usr/bin/packaged" not in stamped
    assert (second / "tmp/build-scratch").exists() and not (second / "var/tmp/scratch").exists()
    # A restored outcome is not kept again.
    assert stepcache.save(build(second, cache), "packages") == "not kept: restored, as kept before"
    assert len(list(cache.glob("packages.*"))) == 1


def test_the_key_follows_the_tree_its_inputs_and_facts_not_times_or_run_own_files(trees, tmp_path):
    first, second, cache = trees
    inputs = tmp_path / "hooks"
    inputs.mkdir()
    (inputs / "instsoft.DEBIAN").write_text("#! /bin/bash\n")
    stepcache.begin(build(first, cache), "packages", [inputs])
    run_step(first)
    stepcache.save(build(first, cache), "packages")

    def outcome(change=lambda root: None, facts=FACTS) -> str:
        shutil.rmtree(tmp_path / "try", ignore_errors=True)
        subprocess.run(["cp", "-a", f"{second}/.", str(tmp_path / "try")], check=True)
        change(tmp_path / "try")
        return stepcache.begin(build(tmp_path / "try", cache, facts), "packages", [inputs])

    assert outcome(lambda root: os.utime(root / "etc/hosts", (1, 1))) == "restored"
    assert outcome(lambda root: (root / "var/log/apt.log").write_text("this run's\n")) == "restored"
    assert outcome(lambda root: (root / "etc/hosts").write_text("127.0.1.1 other\n")) == "missing"
    assert outcome(lambda root: (root / "etc/hosts").chmod(0o600)) == "missing"
    assert outcome(lambda root: (root / "etc/new").touch()) == "missing"
    assert outcome(facts={**FACTS, "arch": "arm64"}) == "missing"
    assert outcome(facts={**FACTS, "time": "1800000000"}) == "restored"  # the build's time: not read
    (inputs / "instsoft.DEBIAN").write_text("#! /bin/bash\necho changed\n")
    assert outcome() == "missing"


def test_the_initramfs_key_leaves_out_what_no_initramfs_hook_reads(trees):
    first, second, cache = trees
    stepcache.begin(build(first, cache), "initramfs", [])
    (first / "boot").mkdir()
    (first / "boot/initrd.img-6.1").write_bytes(b"\x28\xb5\x2f\xfd initramfs")
    stepcache.save(build(first, cache), "initramfs")

    (second / "etc/cloud/cloud.cfg").write_text("datasource_list: [Ec2]\n")
    restoring = time.time_ns()
    assert stepcache.begin(build(second, cache), "initramfs", []) == "restored"
    assert (second / "boot/initrd.img-6.1").read_bytes() == b"\x28\xb5\x2f\xfd initramfs"
    # Kept by a build of another version, maybe days ago: stamped as if written now, so that
    # the build clamps it to its own time like an initramfs it made.
    assert os.lstat(second / "boot/initrd.img-6.1").st_mtime_ns >= restoring
    assert stepcache.begin(build(second, cache, {**FACTS, "time": "1800000000"}), "initramfs", []) == "missing"
    (second / "usr/bin/tool").write_bytes(b"\x7fELF tool, another version")
    assert stepcache.begin(build(second, cache), "initramfs", []) == "missing"


def test_the_initramfs_key_masks_the_version_s_identifiers_in_fstab(trees):
    """A new version's disk gets new PARTUUIDs (identity.py): fstab names them, the initramfs
    does not hold them, so its key masks them; a new file system type is a new key."""
    first, second, cache = trees

    def with_fstab(root, uuid, fstype="ext4", version="1"):
        (root / "etc/fstab").write_text(f"PARTUUID={uuid} / {fstype} rw 0 1\n")
        (root / "etc/cloud-release").write_text(f'ID=nocloud\nVERSION="{version}"\n')
        return stepcache.Build(root, cache, FACTS, identifiers=(uuid,))

    stepcache.begin(with_fstab(first, "11111111-aaaa"), "initramfs", [])
    (first / "boot").mkdir()
    (first / "boot/initrd.img-6.1").write_bytes(b"initramfs")
    stepcache.save(with_fstab(first, "11111111-aaaa"), "initramfs")

    assert stepcache.begin(with_fstab(second, "22222222-bbbb", version="2"), "initramfs", []) == "restored"
    assert stepcache.begin(with_fstab(second, "22222222-bbbb", "btrfs"), "initramfs", []) == "missing"
    # Only the build's own identifiers are masked: another value in fstab is content.
    other = stepcache.Build(second, cache, FACTS, identifiers=("33333333-cccc",))
    (second / "etc/fstab").write_text("PARTUUID=22222222-bbbb / ext4 rw 0 1\n")
    assert stepcache.begin(other, "initramfs", []) == "missing"


def test_one_outcome_per_step_the_last_one(trees):
    first, _, cache = trees
    for version in ("1", "2"):
        (first / "etc/hosts").write_text(version)
        stepcache.begin(build(first, cache), "initramfs", [])
        (first / "boot").mkdir(exist_ok=True)
        (first / "boot/initrd.img").write_text(version)
        stepcache.save(build(first, cache), "initramfs")
    kept = list(cache.glob("initramfs.*"))
    assert len(kept) == 1 and not list(cache.glob(".*"))


def test_an_entry_that_cannot_be_restored_fails_the_build_and_goes(trees):
    first, second, cache = trees
    stepcache.begin(build(first, cache), "packages", [])
    run_step(first)
    stepcache.save(build(first, cache), "packages")
    [kept] = cache.glob("packages.*")
    (kept / "tree.tar.zst").write_bytes((kept / "tree.tar.zst").read_bytes()[:100])  # cut short
    with pytest.raises(stepcache.StepCacheFailed, match="the next build makes the step"):
        stepcache.begin(build(second, cache), "packages", [])
    assert not kept.exists()
    assert stepcache.begin(build(second, cache), "packages", []) == "missing"


def test_nothing_kept_from_a_run_with_a_failed_task(trees):
    first, second, cache = trees
    stepcache.begin(build(first, cache), "packages", [])
    run_step(first)
    failed = stepcache.Build(first, cache, FACTS, flawless=False)
    assert stepcache.save(failed, "packages") == "not kept: a task of this run failed"
    assert stepcache.begin(build(second, cache), "packages", []) == "missing"


def test_off_without_a_cache_directory(trees):
    first, *_ = trees
    assert stepcache.begin(build(first, None), "packages", []) == "off"
    (first / "etc/hosts").write_text("changed\n")
    assert stepcache.save(build(first, None), "packages") == "off"


def test_the_build_environment_names_the_cache_and_facts(tmp_path):
    (tmp_path / "task_error").write_text("0\n")  # FAI's worst task error so far
    env = {
        "LOGDIR": str(tmp_path),
        "target": str(tmp_path),
        "IMAGE_STEP_CACHE": str(tmp_path / "cache"),
        "IMAGE_ARCH": "arm64",
        "IMAGE_SOURCE_DATE_EPOCH": "1800000000",  # the build's: in no key
        "IMAGE_INITRAMFS_EPOCH": "1700000000",
        "IMAGE_PARTUUID_ROOT": "11111111-aaaa",
        "IMAGE_ESP_VOLUME_ID": "1234abcd",
        "classes": "DEFAULT  DEBIAN CLOUD",
    }
    found = stepcache.Build.from_environment(env)
    assert found.cache == tmp_path / "cache" and found.target == tmp_path
    assert found.facts["arch"] == "arm64" and found.facts["time"] == "1700000000"
    assert found.facts["classes"] == "DEFAULT DEBIAN CLOUD"
    assert found.identifiers == ("11111111-aaaa", "1234abcd")
    assert found.flawless
    (tmp_path / "task_error").write_text("471\n")  # install_packages failed
    assert not stepcache.Build.from_environment(env).flawless
    assert not stepcache.Build.from_environment({**env, "LOGDIR": str(tmp_path / "none")}).flawless
    assert stepcache.Build.from_environment({**env, "IMAGE_STEP_CACHE": ""}).cache is None
    # The base's mark, once hooks/extrbase.DEBIAN touched it, with the base's digest.
    assert found.base is None
    mark = tmp_path / "base-unpacked"
    marked = {**env, "IMAGE_BASE_SHA256": "ab" * 32, "IMAGE_BASE_UNPACKED": str(mark)}
    assert stepcache.Build.from_environment(marked).base is None  # not touched: FAI ran debootstrap
    mark.touch()
    assert stepcache.Build.from_environment(marked).base == stepcache.BaseMark("ab" * 32, mark.stat().st_ctime_ns)


def mark_base(root: Path, mark: Path, digest: str = "base-1") -> stepcache.Build:
    """As hooks/extrbase.DEBIAN does once the base is unpacked: the mark, then a tick of the clock."""
    mark.touch()
    time.sleep(0.02)
    return stepcache.Build(root, root.parent / "cache", FACTS, base=stepcache.BaseMark(digest, mark.stat().st_ctime_ns))


def test_the_key_reads_only_what_the_build_touched_since_the_base_was_unpacked(trees, monkeypatch):
    """Files untouched since the mark count by the base's digest; the key reads the others,
    follows their content, and is the same for two builds that changed the same files alike."""
    first, second, cache = trees
    first_build, second_build = mark_base(first, first / "../mark-1"), mark_base(second, second / "../mark-2")
    for root in (first, second):
        (root / "etc/hosts").write_text("127.0.0.1 localhost image\n")  # a hook's edit after the unpacking
    read = []
    content = stepcache._content

    def reading(path, size=None):
        read.append(str(path))
        return content(path, size)

    monkeypatch.setattr(stepcache, "_content", reading)
    assert stepcache.begin(first_build, "packages", []) == "missing"
    assert read == [str(first / "etc/hosts")]
    (first / "boot").mkdir()
    (first / "boot/kept").write_text("made by the step\n")
    stepcache.save(first_build, "packages")
    assert stepcache.begin(second_build, "packages", []) == "restored"
    assert (second / "boot/kept").read_text() == "made by the step\n"


@pytest.mark.parametrize(
    "change",
    [
        lambda root: (root / "etc/hosts").write_text("127.0.0.1 localhost other\n"),  # touched, other content
        lambda root: (root / "usr/bin/tool").write_bytes(b"\x7fELF tool, as edited"),  # was untouched
        lambda root: (root / "usr/bin/tool").chmod(0o700),
        lambda root: (root / "usr/share/old/file").unlink(),
    ],
)
def test_with_a_base_mark_the_key_still_follows_every_change(trees, change):
    first, second, cache = trees
    first_build, second_build = mark_base(first, first / "../mark-1"), mark_base(second, second / "../mark-2")
    for root in (first, second):
        (root / "etc/hosts").write_text("127.0.0.1 localhost image\n")
    stepcache.begin(first_build, "packages", [])
    stepcache.save(first_build, "packages")
    change(second)
    assert stepcache.begin(second_build, "packages", []) == "missing"


def test_another_base_is_another_key(trees):
    first, second, cache = trees
    first_build = mark_base(first, first / "../mark-1", "base-1")
    stepcache.begin(first_build, "packages", [])
    stepcache.save(first_build, "packages")
    assert stepcache.begin(mark_base(second, second / "../mark-2", "base-2"), "packages", []) == "missing"
    assert stepcache.begin(mark_base(second, second / "../mark-3", "base-1"), "packages", []) == "restored"
