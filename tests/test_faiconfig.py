"""Which config-space files a build depends on, by class."""

from pathlib import Path

import pytest

from tasks.stages import faiconfig

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "path, owner",
    [
        ("class/DEBIAN.var", "DEBIAN"),
        ("class/50-host-classes", None),
        ("package_config/CLOUD", "CLOUD"),
        ("package_config/EC2.gpg", "EC2"),
        ("disk_config/AMD64", "AMD64"),
        ("debconf/GRUB_PC", "GRUB_PC"),
        ("scripts/NOCLOUD/10-console", "NOCLOUD"),
        ("tests/LAST/10-image-tree", "LAST"),
        ("hooks/repository.DEBIAN", "DEBIAN"),
        ("hooks/savelog.LAST.sh", "LAST"),
        ("hooks/subroutines", None),
        ("files/etc/default/grub.d/50-image.cfg/GRUB_PC", "GRUB_PC"),
        ("files/etc/default/grub.d/50-image.cfg/postinst", None),
        ("basefiles/BOOKWORM64.tar.zst", "BOOKWORM64"),
        ("README", None),
    ],
)
def test_owning_class(path, owner):
    assert faiconfig.owning_class(Path(path)) == owner


def test_selection_follows_classes(test_matrix):
    space = REPO / "fai_config"
    nocloud = {
        str(p.relative_to(space))
        for p in faiconfig.selected_files(space, test_matrix.cell("bookworm-nocloud-amd64").fai_classes)
    }
    cloud = {
        str(p.relative_to(space))
        for p in faiconfig.selected_files(space, test_matrix.cell("bookworm-genericcloud-amd64").fai_classes)
    }
    assert {"scripts/NOCLOUD/10-password", "files/etc/netplan/90-default.yaml/NOCLOUD"} <= nocloud - cloud
    assert {"package_config/CLOUD", "files/etc/default/grub.d/15_timeout.cfg/CLOUD"} <= cloud - nocloud
    assert "class/TRIXIE.var" not in nocloud | cloud
    shared = {
        "class/DEBIAN.var",
        "class/BOOKWORM.var",
        "scripts/LAST/90-clean",
        "hooks/partition.DEBIAN",
        "scripts/DEBIAN/40-grub",
        "tests/LAST/10-image-checks",
    }
    assert shared <= nocloud & cloud


def test_every_config_file_is_used_by_some_cell(test_matrix):
    """A file no cell selects is dead configuration (or a misspelt class)."""
    space = REPO / "fai_config"
    used = set()
    for cell in test_matrix.cells:
        used.update(faiconfig.selected_files(space, cell.fai_classes))
    unused = [str(p.relative_to(space)) for p in space.rglob("*") if p.is_file() and p not in used]
    assert unused == []


def test_the_build_reads_its_apt_sources_from_the_builder(tmp_path, test_matrix):
    """hooks/repository.DEBIAN writes the sources base.py computes (once) for the release."""
    import os
    import subprocess

    from tasks.stages import base, fai

    cell = test_matrix.cell("bookworm-nocloud-amd64")
    (tmp_path / "base.tar.zst").touch()
    inputs = fai.BuildInputs(
        REPO / "fai_config",
        tmp_path / "base.tar.zst",
        tmp_path / "apt",
        tmp_path / "steps",
        "1",
        tmp_path / "cpu",
        tmp_path / "tools",
    )
    env = fai.fai_environment(cell, test_matrix.build, tmp_path / "staging", inputs)
    target = tmp_path / "target"
    (target / "etc" / "apt").mkdir(parents=True)
    subprocess.run(
        ["bash", str(REPO / "fai_config" / "hooks" / "repository.DEBIAN")],
        check=True,
        env={**os.environ, **env, "target": str(target)},
    )
    written = (target / "etc" / "apt" / "sources.list").read_text().splitlines()
    assert written == list(base.build_sources(REPO / "fai_config", cell.release, test_matrix.build))
    assert written == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ]
