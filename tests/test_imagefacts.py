"""The fidelity report: facts measured in an image tree, compared field by field."""

import json
from pathlib import Path

import pytest

from tasks.commands import compare as compare_command
from tasks.model import plan
from tasks.stages import imagefacts

from .test_imagecheck import good_tree, write

REPO = Path(__file__).resolve().parent.parent


def official_like(root: Path) -> Path:
    """A tree with the settings Debian's EC2 image has."""
    good_tree(root)
    write(root, "usr/bin/cloud-init")
    write(root, "etc/cloud/cloud.cfg", "system_info:\n  default_user:\n    name: debian\n  distro: debian\n")
    write(
        root,
        "etc/cloud/cloud.cfg.d/01_debian_cloud.cfg",
        "apt:\n  generate_mirrorlists: true\nsystem_info:\n  default_user:\n    name: admin\n    groups: [adm, sudo]\n",
    )
    write(
        root,
        "var/lib/dpkg/status",
        "".join(
            f"Package: {p}\nStatus: install ok installed\n\n"
            for p in ("netplan.io", "systemd-timesyncd", "openssh-server", "cloud-init")
        ),
    )
    write(root, "etc/systemd/timesyncd.conf.d/01_debian_cloud.conf", "[Time]\nFallbackNTP=169.254.169.123\n")
    write(
        root,
        "etc/apt/sources.list.d/debian.sources",
        "Types: deb deb-src\nURIs: mirror+file:///etc/apt/mirrors/debian.list\n"
        "Suites: bookworm bookworm-updates bookworm-backports\nComponents: main\n\n"
        "Types: deb deb-src\nURIs: mirror+file:///etc/apt/mirrors/debian-security.list\n"
        "Suites: bookworm-security\nComponents: main\n",
    )
    write(root, "etc/apt/sources.list", "# see debian.sources\n")
    write(root, "etc/apt/mirrors/debian.list", "https://deb.debian.org/debian\n")
    write(
        root,
        "etc/ssh/sshd_config",
        "#PermitRootLogin prohibit-password\nPasswordAuthentication no\nClientAliveInterval 120\n",
    )
    (root / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True)
    (root / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service").symlink_to("/lib/x")
    return root


def test_facts_measured_in_the_tree(tmp_path):
    facts = imagefacts.measure(official_like(tmp_path))
    assert facts["schema"] == imagefacts.SCHEMA
    assert facts["users"]["default_user"] == "admin", "cloud.cfg.d overrides cloud.cfg, key by key"
    assert facts["users"]["uid_1000_and_up"] == [] and facts["users"]["root_login"] == "locked"
    assert facts["time"] == {"daemon": "systemd-timesyncd", "sources": ["FallbackNTP=169.254.169.123"]}
    assert facts["apt"]["format"] == "deb822"
    assert facts["apt"]["suites"] == ["bookworm", "bookworm-backports", "bookworm-security", "bookworm-updates"]
    assert facts["apt"]["mirrors"] == {"debian": ["https://deb.debian.org/debian"]}
    assert facts["network"]["netplan"] and not facts["network"]["ifupdown"]
    assert facts["network"]["systemd_networkd"] and not facts["network"]["systemd_resolved"]
    assert facts["ssh"]["settings"]["PasswordAuthentication"] == "no"
    assert facts["grub"]["kernel_cmdline"] == ["root=PARTUUID=0b9f5f0e-1", "ro", "console=ttyS0"]
    assert facts["cloud_release"] == {"ID": "genericcloud", "VERSION": "<version>"}


def test_two_builds_of_a_cell_compare_equal_and_a_change_shows(tmp_path):
    one = imagefacts.measure(official_like(tmp_path / "one"))
    two_root = official_like(tmp_path / "two")
    assert imagefacts.compare(one, imagefacts.measure(two_root)) == []
    write(two_root, "etc/cloud/cloud.cfg.d/01_debian_cloud.cfg", "system_info:\n  default_user:\n    name: debian\n")
    write(two_root, "var/lib/dpkg/status", "Package: ifupdown\nStatus: install ok installed\n")
    lines = imagefacts.compare(one, imagefacts.measure(two_root))
    assert 'users.default_user: "admin" != "debian"' in lines
    assert (
        "packages: only left: cloud-init, netplan.io, openssh-server, systemd-timesyncd; only right: ifupdown"
    ) in lines


def test_a_missing_report_or_another_schema_is_one_line(tmp_path):
    with pytest.raises(imagefacts.FactsError, match=r"facts.json: no image facts report"):
        imagefacts.load(tmp_path / "facts.json")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema": "image-facts/0"}))
    with pytest.raises(imagefacts.FactsError, match=r"schema 'image-facts/0', this version reads 'image-facts/1'"):
        imagefacts.load(old)


def test_doit_compare_takes_cells_and_files(tmp_path, capsys):
    left = tmp_path / "left.json"
    left.write_text(json.dumps(imagefacts.measure(official_like(tmp_path / "tree"))))
    manifest = tmp_path / "manifest.json"
    facts = json.loads(left.read_text())
    facts["hostname"] = "changed"
    manifest.write_text(json.dumps({"schema": 2, "artifacts": [], "facts": facts}))
    options = {
        "workdir": str(tmp_path / "build"),
        "left": str(left),
        "right": str(manifest),
        "matrix": str(REPO / "tests" / "data" / "matrix.yaml"),
    }
    the_plan = plan.from_options(REPO, options.get, options)
    assert compare_command.compare_reports(the_plan) is None
    out = capsys.readouterr().out
    assert "1 differences" in out and 'hostname: "" != "changed"' in out

    options["right"] = "bookworm-ec2-amd64"  # a cell not built in this work directory
    failure = compare_command.compare_reports(plan.from_options(REPO, options.get, options))
    assert "bookworm-ec2-amd64/facts.json: no image facts report" in str(failure)
