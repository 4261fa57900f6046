"""The in-build image checks, on a small tree laid out as a good image is,
then broken one way at a time: each breakage fails exactly its check."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.stages import imagecheck
from tasks.stages.imagecheck import Image
from tasks.system import hostenv

REPO = Path(__file__).resolve().parent.parent
CLOUD_CLASSES = frozenset({"DEBIAN", "BOOKWORM", "AMD64", "CLOUD", "GENERIC", "LAST"})
ESP = frozenset(
    {
        "EFI/BOOT/BOOTX64.EFI",
        "EFI/BOOT/GRUBX64.EFI",
        "EFI/BOOT/MMX64.EFI",
        "EFI/DEBIAN/SHIMX64.EFI",
        "EFI/DEBIAN/GRUBX64.EFI",
        "EFI/DEBIAN/GRUB.CFG",
    }
)
PASSWD = """root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
sync:x:4:65534:sync:/bin:/bin/sync
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin
sshd:x:100:65534::/run/sshd:/usr/sbin/nologin
"""
GROUPS = [
    "root",
    "adm",
    "audio",
    "cdrom",
    "dialout",
    "dip",
    "floppy",
    "plugdev",
    "sudo",
    "video",
    "nogroup",
    "systemd-journal",
    "_ssh",
]


def write(root: Path, relative: str, text: str = "") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def good_tree(root: Path) -> Path:
    for directory in imagecheck.EMPTY_DIRECTORIES + ("var/log/journal", "etc/ssh", "boot/efi"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    write(root, "boot/vmlinuz-6.1.0-28-cloud-amd64")
    write(root, "boot/initrd.img-6.1.0-28-cloud-amd64")
    write(
        root,
        "boot/grub/grub.cfg",
        "menuentry 'Debian' {\n\tlinux /boot/vmlinuz-6.1.0-28-cloud-amd64 "
        "root=PARTUUID=0b9f5f0e-1 ro console=ttyS0\n}\n",
    )
    (root / "boot/grub/i386-pc").mkdir()
    (root / "boot/grub/x86_64-efi").mkdir()
    write(root, "etc/cloud-release", 'ID=genericcloud\nVERSION="1"\n')
    write(root, "etc/default/locale", "LANG=C.UTF-8\n")
    write(root, "etc/fstab", "PARTUUID=0b9f5f0e-1 / ext4 rw 0 1\nPARTUUID=5e0c-2 /boot/efi vfat defaults 0 0\n")
    (root / "etc/resolv.conf").symlink_to("/run/systemd/resolve/resolv.conf")
    write(root, "etc/passwd", PASSWD)
    write(root, "etc/group", "".join(f"{g}:x:{i if i < 11 else 100 + i}:\n" for i, g in enumerate(GROUPS)))
    write(root, "etc/shadow", "root:*:20000:0:99999:7:::\n")
    write(root, "etc/machine-id")
    write(root, "etc/hostname")
    write(root, "etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    write(
        root,
        "var/lib/dpkg/status",
        "Package: base-files\nStatus: install ok installed\n\nPackage: sudo\nStatus: install ok installed\n",
    )
    write(root, "var/lib/dpkg/diversions", "")
    write(root, "sbin/init")
    write(root, "usr/sbin/sshd")
    write(root, "var/log/wtmp")
    return root


def image(root: Path, classes=CLOUD_CLASSES, esp=ESP) -> Image:
    return Image(root, "amd64", classes, esp)


def failed(img: Image) -> dict[str, list[str]]:
    return {name: problems for name, problems in imagecheck.run(img).items() if problems}


def test_a_good_tree_passes_every_check_that_applies(tmp_path):
    results = imagecheck.run(image(good_tree(tmp_path)))
    assert {name for name, problems in results.items() if problems} == set()
    assert "root has no password" in results and "root logs in on the console without a password" not in results
    assert sum(check.debian for check in imagecheck.CHECKS) == 11, "Debian's own in-image tests, all of them"


def test_a_credential_in_the_builds_environment_fails_the_build_and_is_named_not_shown(tmp_path):
    root = good_tree(tmp_path)
    leaked = {
        "PATH": "/usr/bin:/bin",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "IMAGES_STORAGE_PASSWORD": "hunter2",
        "CI_JOB_TOKEN": "glcbt-1",
        "IMAGES_SIGNING_KEY": "/run/key.asc",
        "IMAGE_VERSION": "20261207-1",
    }
    problems = failed(Image(root, "amd64", CLOUD_CLASSES, ESP, leaked))
    assert problems == {
        "no credential reaches the image's build": [
            f"${name} reached the image's build"
            for name in ("AWS_SECRET_ACCESS_KEY", "CI_JOB_TOKEN", "IMAGES_SIGNING_KEY", "IMAGES_STORAGE_PASSWORD")
        ]
    }
    assert not any(secret in str(problems) for secret in ("s3cr3t", "hunter2", "glcbt-1"))


def test_a_build_gets_an_allowlist_of_our_environment(repo_matrix, tmp_path, monkeypatch):
    from tasks.stages import fai

    for name, value in {
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "IMAGES_STORAGE_PASSWORD": "hunter2",
        "CI_JOB_TOKEN": "glcbt-1",
        "GITLAB_TOKEN": "glpat-1",
        "PYTHONPATH": "/x",
        "http_proxy": "http://proxy:3128",
    }.items():
        monkeypatch.setenv(name, value)
    cell = repo_matrix.cell("bookworm-nocloud-amd64")
    inputs = fai.BuildInputs(
        tmp_path, tmp_path / "base.tar.zst", tmp_path, None, "20261207-1", tmp_path, tmp_path / "tools"
    )
    env = fai.fai_environment(cell, repo_matrix.build, tmp_path, inputs)
    assert hostenv.credentials(env) == [] and "PYTHONPATH" not in env
    assert env["PATH"] == os.environ["PATH"] and env["http_proxy"] == "http://proxy:3128"
    assert env["IMAGE_VERSION"] == "20261207-1"


def drop(relative):
    return lambda root: (root / relative).unlink()


def append(relative, text):
    return lambda root: (root / relative).write_text((root / relative).read_text() + text)


BREAKAGES = [
    # (what breaks the tree, the check that must fail, a word of its message)
    (lambda root: write(root, "tmp/build-leftover"), "runtime and cache directories are empty", "/tmp holds"),
    (lambda root: write(root, "etc/mailname", "debian\n"), "no mailname and no kernel links in /", "/etc/mailname"),
    (
        lambda root: (root / "vmlinuz").symlink_to("boot/vmlinuz-6.1.0-28-cloud-amd64"),
        "no mailname and no kernel links in /",
        "/vmlinuz",
    ),
    (
        lambda root: (root / "boot/grub/i386-pc").rmdir(),
        "kernel, initramfs, grub.cfg and GRUB's modules in /boot",
        "i386-pc",
    ),
    (drop("etc/cloud-release"), "/etc/cloud-release exists", "missing"),
    (lambda root: write(root, "etc/default/locale", "LANG=en_US.UTF-8\n"), "locale is C.UTF-8", "en_US"),
    (
        lambda root: (root / "etc/resolv.conf").unlink() or write(root, "etc/resolv.conf", "nameserver 10.0.0.1\n"),
        "/etc/resolv.conf is a link or absent",
        "a file",
    ),
    (append("etc/group", "docker:x:999:\n"), "only Debian's system groups", "docker"),
    (lambda root: write(root, "etc/group", "root:x:0:\n"), "only Debian's system groups", "sudo is missing"),
    # A stray user with a login shell, as a leftover of a test or a cloud-init run.
    (
        append("etc/passwd", "debian:x:1000:1000:Debian:/home/debian:/bin/bash\n"),
        "only Debian's system users, none of them with a login shell",
        "debian",
    ),
    (
        append("etc/passwd", "messagebus:x:101:101::/nonexistent:/bin/sh\n"),
        "only Debian's system users, none of them with a login shell",
        "shell /bin/sh",
    ),
    (
        append("var/lib/dpkg/status", "\nPackage: ifupdown\nStatus: deinstall ok config-files\n"),
        "every package is fully installed",
        "ifupdown",
    ),
    (
        lambda root: write(root, "var/log/dpkg.log", "install sudo\n"),
        "/var/log holds only what Debian allows, emptied",
        "dpkg.log",
    ),
    (lambda root: write(root, "var/log/wtmp", "x"), "/var/log holds only what Debian allows, emptied", "not empty"),
    (lambda root: (root / "sbin/init").unlink(), "an init that outlives FAI's clean-up", "/sbin/init"),
    (lambda root: write(root, "etc/fstab", "UUID=abc / ext4 rw 0 1\n"), "fstab mounts by PARTUUID", "UUID=abc"),
    (
        lambda root: write(root, "boot/grub/grub.cfg", "linux /vmlinuz root=/dev/loop0p1 ro\n"),
        "grub.cfg finds root by PARTUUID",
        "root=/dev/loop0p1",
    ),
    (
        lambda root: write(root, "etc/ssh/ssh_host_ed25519_key", "KEY"),
        "a fresh identity for every instance",
        "ssh_host_ed25519_key",
    ),
    (lambda root: write(root, "etc/hostname", "builder\n"), "a fresh identity for every instance", "hostname"),
    (
        append("etc/hosts", "10.1.2.3\tbuildhost.example.org\n"),
        "nothing of the build host or the build left",
        "buildhost",
    ),
    (
        lambda root: write(root, "etc/apt/apt.conf.d/00image-build"),
        "nothing of the build host or the build left",
        "00image-build",
    ),
    (
        lambda root: write(root, "var/lib/apt/listchanges.db", "seen"),
        "nothing of the build host or the build left",
        "listchanges.db",
    ),
    (
        lambda root: write(root, "etc/shadow", "root:$6$salt$hash:20000:0:99999:7:::\n"),
        "root has no password",
        "password",
    ),
    (drop("usr/sbin/sshd"), "an SSH server", "sshd"),
]


@pytest.mark.parametrize("breakage, check, word", BREAKAGES, ids=[f"{c}-{w}" for _, c, w in BREAKAGES])
def test_each_breakage_fails_its_check_only(tmp_path, breakage, check, word):
    root = good_tree(tmp_path)
    breakage(root)
    result = failed(image(root))
    assert list(result) == [check]
    assert word in "; ".join(result[check])


def test_an_esp_without_shim_fails(tmp_path):
    result = failed(image(good_tree(tmp_path), esp=ESP - {"EFI/BOOT/BOOTX64.EFI"}))
    assert result == {"shim and signed GRUB on the ESP": ["the ESP lacks EFI/BOOT/BOOTX64.EFI"]}


def test_nocloud_rules(tmp_path):
    root = good_tree(tmp_path)
    nocloud = (CLOUD_CLASSES - {"CLOUD", "GENERIC"}) | {"NOCLOUD"}
    result = failed(image(root, classes=frozenset(nocloud)))
    assert set(result) == {"root logs in on the console without a password", "no cloud-init and no SSH server"}
    write(root, "etc/shadow", "root::20000:0:99999:7:::\n")
    (root / "usr/sbin/sshd").unlink()
    assert failed(image(root, classes=frozenset(nocloud))) == {}


def test_the_command_prints_one_line_per_check_and_fails_on_a_failure(tmp_path):
    root = good_tree(tmp_path)
    write(root, "etc/mailname", "debian\n")

    def run():
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "tasks.stages.imagecheck",
                "--root",
                str(root),
                "--arch",
                "amd64",
                "--classes",
                " ".join(sorted(CLOUD_CLASSES)),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=hostenv.passed(),  # as a build's: this test's own may hold a CI job's tokens
        )

    result = run()
    assert result.returncode == 1 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert "image check FAILED with: no mailname and no kernel links in /: /etc/mailname exists" in lines
    # Without --esp nothing is on the ESP: that check fails too; every other passes.
    assert sum(line.startswith("image check FAILED with: ") for line in lines) == 2
    assert len(lines) == len([c for c in imagecheck.CHECKS if c.applies(image(root))])


def test_esp_files_are_read_with_mtools(tmp_path):
    esp = tmp_path / "esp.img"
    subprocess.run(["mkfs.vfat", "-C", str(esp), "8192"], check=True, capture_output=True)
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], check=True, env=env)
    shim = write(tmp_path, "shim", "MZ")
    subprocess.run(["mcopy", "-i", str(esp), str(shim), "::/EFI/BOOT/BOOTX64.EFI"], check=True, env=env)
    assert imagecheck.esp_files(str(esp)) == {"EFI/BOOT/BOOTX64.EFI"}
