"""matrix.yaml: loading, cell naming and one clear error per kind of mistake."""

import copy
from pathlib import Path

import pytest
import yaml

from tasks.model import matrix, settings
from tasks.model.matrix import MatrixError

REPO = Path(__file__).resolve().parent.parent
# The unit tests' own matrix (tests/data/matrix.yaml), not the project's.
FIXTURE_MATRIX = REPO / "tests" / "data" / "matrix.yaml"
GOOD = yaml.safe_load((FIXTURE_MATRIX).read_text())


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


def error_for(tmp_path: Path, mutate) -> str:
    data = copy.deepcopy(GOOD)
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(MatrixError) as caught:
        matrix.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    return message.removeprefix(f"{path}: ")


def test_repository_matrix_loads():
    m = matrix.load(FIXTURE_MATRIX)
    assert set(m.releases) == {"bookworm", "trixie", "sid"}
    assert set(m.vendors) == {"generic", "genericcloud", "nocloud", "ec2", "azure", "gce"}
    assert set(m.architectures) == {"amd64", "arm64"}
    assert [c.name for c in m.tier("push")] == ["bookworm-genericcloud-amd64", "bookworm-nocloud-amd64"]
    assert len(m.tier("full")) == len(m.cells) == 3 * 6 * 2


def test_cell_name_classes_and_image_name():
    m = matrix.load(FIXTURE_MATRIX)
    cell = m.cell("bookworm-genericcloud-amd64")
    assert (cell.release.name, cell.vendor.name, cell.arch.name) == ("bookworm", "genericcloud", "amd64")
    assert cell.fai_classes == (
        "DEBIAN",
        "BOOKWORM",
        "AMD64",
        "CLOUD",
        "GENERIC",
        "LINUX_CLOUD",
        "TIME_SYSTEMD",
        # a vendor class on this architecture, on this release: after the plain ones, so they win
        "CLOUD+AMD64",
        "GENERIC+AMD64",
        "LINUX_CLOUD+AMD64",
        "TIME_SYSTEMD+AMD64",
        "BOOKWORM+CLOUD",
        "BOOKWORM+GENERIC",
        "BOOKWORM+LINUX_CLOUD",
        "BOOKWORM+TIME_SYSTEMD",
        "LAST",
    )
    assert cell.base_name == "bookworm-amd64"
    assert m.cell("sid-azure-arm64").arch.firmware == ("uefi",)
    assert cell.arch.firmware == ("bios", "uefi")
    assert cell.image_name("20261125-1532") == "debian-12-genericcloud-amd64-20261125-1532"
    assert m.cell("sid-nocloud-amd64").image_name("1") == "debian-sid-nocloud-amd64-1"


def test_cells_are_immutable():
    cell = matrix.load(FIXTURE_MATRIX).cells[0]
    with pytest.raises(AttributeError):
        setattr(cell.vendor, "disk_size", "9G")  # noqa: B010 (mypy would refuse the assignment the test makes)


def test_wildcard_selection():
    m = matrix.load(FIXTURE_MATRIX)
    assert {c.name for c in m.select("*-nocloud-*")} == {
        f"{r}-nocloud-{a}" for r in m.releases for a in m.architectures
    }
    assert {c.name for c in m.select("trixie-*-arm64")} == {f"trixie-{v}-arm64" for v in m.vendors}
    assert m.select("bookworm-genericcloud-amd64") == [m.cell("bookworm-genericcloud-amd64")]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (
            lambda d: d["vendors"]["nocloud"].update(colour="blue"),
            "vendors.nocloud.colour: unknown key (expected one of: fai_classes, disk_size, formats, boot_until)",
        ),
        (lambda d: d["vendors"]["nocloud"].pop("disk_size"), "vendors.nocloud.disk_size: missing"),
        (
            lambda d: d["vendors"]["nocloud"].update(disk_size="huge"),
            "vendors.nocloud.disk_size: expected a size such as 2G or 512M, got 'huge'",
        ),
        (
            lambda d: d["vendors"]["nocloud"].update(disk_size=2),
            "vendors.nocloud.disk_size: expected a size such as 2G or 512M, got 2",
        ),
        (
            lambda d: d["vendors"]["nocloud"].update(formats=["zip"]),
            "vendors.nocloud.formats[0]: expected one of: tar.xz, qcow2, vhd.tar.xz, tar.gz, got 'zip'",
        ),
        (
            lambda d: d["vendors"]["nocloud"].update(formats="qcow2"),
            "vendors.nocloud.formats: expected a non-empty list, got 'qcow2'",
        ),
        (
            lambda d: d["vendors"]["nocloud"].update(fai_classes=["cloud"]),
            "vendors.nocloud.fai_classes[0]: expected an upper-case FAI class name such as CLOUD, got 'cloud'",
        ),
        (
            lambda d: d["releases"]["bookworm"].update(version=None),
            "releases.bookworm.version: expected a string, got nothing",
        ),
        (
            lambda d: d["architectures"].update(mips={"fai_classes": ["MIPS"], "firmware": ["uefi"]}),
            "architectures.mips: unsupported architecture (expected one of: amd64, arm64)",
        ),
        (
            lambda d: d["architectures"]["arm64"].update(firmware=["bios"]),
            "architectures.arm64.firmware[0]: expected one of: uefi, got 'bios'",
        ),
        (
            lambda d: d.update(known_failures=[{"cells": "potato-*", "reason": "too old"}]),
            "known_failures[0].cells: 'potato-*' matches no cell (cells are named like bookworm-generic-amd64)",
        ),
        (lambda d: d.update(known_failures=[{"cells": "sid-*"}]), "known_failures[0].reason: missing"),
        (lambda d: d.update(deviations=[{"what": "hosts"}]), "deviations[0].reason: missing"),
        (
            lambda d: d.update(deviations={"what": "hosts"}),
            "deviations: expected a list of {what, reason}, got a mapping",
        ),
        (
            lambda d: d.update(known_failures={"cells": "sid-*"}),
            "known_failures: expected a list of {cells, reason}, got a mapping",
        ),
        (
            lambda d: d["tiers"]["push"][0].update(vendors=["nocluod"]),
            "tiers.push[0].vendors[0]: unknown vendor 'nocluod' (expected one of: generic, genericcloud, nocloud, ec2, "
            "azure, gce)",
        ),
        (
            lambda d: d["tiers"]["push"][0].update(releases=["buster"]),
            "tiers.push[0].releases[0]: unknown release 'buster' (expected one of: bookworm, trixie, sid)",
        ),
        (
            lambda d: d["tiers"]["push"][0].update(architectures=["arm"]),
            "tiers.push[0].architectures[0]: unknown architecture 'arm' (expected one of: amd64, arm64)",
        ),
        (lambda d: d["tiers"].pop("push"), "tiers.push: missing (the tier built by default)"),
        (lambda d: d.pop("vendors"), "vendors: missing"),
        (
            lambda d: d.update(extra=1),
            "extra: unknown key (expected one of: releases, architectures, vendors, tiers, known_failures, deviations, "
            "build, compress, boot_test, publish, release, ci)",
        ),
        (lambda d: d["compress"].update(xz_level=12), "compress.xz_level: expected a whole number from 0 to 9, got 12"),
        (
            lambda d: d["boot_test"].update(accelerator="hvf"),
            "boot_test.accelerator: expected one of: auto, kvm, tcg, got 'hvf'",
        ),
        (
            lambda d: d["boot_test"].update(timeout="soon"),
            "boot_test.timeout: expected a whole number from 10 to 7200, got 'soon'",
        ),
        (
            lambda d: d["build"].update(mirror="deb.debian.org"),
            "build.mirror: expected an http:// or https:// URL, got 'deb.debian.org'",
        ),
        (
            lambda d: d["vendors"].update({"No Cloud": d["vendors"]["nocloud"]}),
            "vendors.No Cloud: expected a lower-case name such as bookworm",
        ),
        (
            lambda d: d["vendors"]["ec2"].update(boot_until="shell"),
            "vendors.ec2.boot_until: expected one of: systemd, login, got 'shell'",
        ),
        (
            lambda d: d["publish"].update(keep_dailies=0),
            "publish.keep_dailies: expected a whole number from 1 to 10000, got 0",
        ),
        (
            lambda d: d["release"].update(instance_test=["genericcluod"]),
            "release.instance_test[0]: unknown vendor 'genericcluod' (expected one of: generic, genericcloud, nocloud, "
            "ec2, azure, gce)",
        ),
        (
            lambda d: d["release"].update(platforms={"ec2": {"bucket": "imports"}}),
            "release.platforms.ec2.region: missing",
        ),
        (
            lambda d: d["release"].update(platforms={"ec2": {"region": "us-east-1", "bucket": "b", "public": "yes"}}),
            "release.platforms.ec2.public: expected true or false, got 'yes'",
        ),
        (
            lambda d: d["release"].update(
                platforms={"ec2": {"region": "us-east-1", "bucket": "b", "regions": ["Mars"]}}
            ),
            "release.platforms.ec2.regions[0]: expected region, got 'Mars'",
        ),
        (
            lambda d: d["release"].update(
                platforms={"ec2": {"region": "us-east-1", "bucket": "b", "regions": ["all", "eu-west-1"]}}
            ),
            "release.platforms.ec2.regions: `all` stands alone: every enabled region",
        ),
        (
            lambda d: d["release"].update(
                platforms={"ec2": {"region": "us-east-1", "bucket": "b", "ssm_prefix": "debian/images"}}
            ),
            "release.platforms.ec2.ssm_prefix: expected a path (/a/b), got 'debian/images'",
        ),
        (
            lambda d: d["release"].update(
                platforms={
                    "azure": {
                        "subscription": "s",
                        "resource_group": "g",
                        "location": "westeurope",
                        "container_url": "https://a.blob.core.windows.net/images",
                        "gallery": "debian",
                        "storage_account_id": "/subscriptions/s/x",
                    }
                }
            ),
            "release.platforms.azure.gallery_image: needed with gallery 'debian'",
        ),
        (
            lambda d: d["release"].update(keep_releases=0),
            "release.keep_releases: expected a whole number from 1 to 1000, got 0",
        ),
        (
            lambda d: d["release"].update(platforms={"openstack": {}}),
            "release.platforms.openstack: unknown key (expected one of: azure, ec2, gce)",
        ),
        (
            lambda d: d["release"].update(
                platforms={"gce": {"project": "p", "bucket": "b", "api_endpoint": "https://me:pw@example.org"}}
            ),
            "release.platforms.gce.api_endpoint: credentials do not belong in matrix.yaml: give them through the "
            "environment",
        ),
        (
            lambda d: d["release"].update(notify={"webhook": "hooks.example.org/x"}),
            "release.notify.webhook: expected an http(s) URL, got 'hooks.example.org/x'",
        ),
        (
            lambda d: d["release"].update(notify={"to": ["cloud team"], "from": "images@example.org"}),
            "release.notify.to[0]: expected an e-mail address, got 'cloud team'",
        ),
        (
            lambda d: d["release"].update(notify={"to": ["team@example.org"]}),
            "release.notify.from: missing (the sender of the release mail)",
        ),
    ],
)
def test_bad_entries_name_file_key_and_expectation(tmp_path, mutate, expected):
    assert error_for(tmp_path, mutate) == expected


def test_invalid_yaml_names_line(tmp_path):
    path = write(tmp_path, "releases:\n  bookworm: [\n")
    with pytest.raises(MatrixError) as caught:
        matrix.load(path)
    assert str(caught.value).startswith(f"{path}: line 3, column 1: invalid YAML")


def test_duplicate_key_is_an_error(tmp_path):
    text = (FIXTURE_MATRIX).read_text().replace("  trixie:\n", "  bookworm:\n", 1)
    path = write(tmp_path, text)
    with pytest.raises(MatrixError, match=r"invalid YAML: duplicate key 'bookworm'"):
        matrix.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(MatrixError, match="cannot read: No such file or directory"):
        matrix.load(tmp_path / "absent.yaml")


def test_known_failures(tmp_path):
    data = copy.deepcopy(GOOD)
    data["known_failures"] = [{"cells": "sid-*-arm64", "reason": "shim-signed is not in sid"}]
    m = matrix.load(write(tmp_path, data))
    known = m.known_failure(m.cell("sid-ec2-arm64"))
    assert known is not None and known.reason == "shim-signed is not in sid"
    assert m.known_failure(m.cell("sid-ec2-amd64")) is None


def test_unknown_tier():
    m = matrix.load(FIXTURE_MATRIX)
    with pytest.raises(MatrixError, match=r"tiers: no tier named 'nightly' \(expected one of: push, full\)"):
        m.tier("nightly")


def test_defaults_live_in_the_schema_alone():
    """The project's matrix.yaml repeats no default (tasks/model/settings.py holds them)."""
    data = yaml.safe_load((REPO / "matrix.yaml").read_text())
    for name, section in settings.SECTIONS.items():
        for key, value in (data.get(name) or {}).items():
            declared = [f for f in settings.settings_of(section) if settings.key_of(f) == key]
            if declared:  # not a section of its own (release.platforms, release.notify)
                default = settings.default_of(declared[0])
                assert value != default and value != list(default or ()), (
                    f"matrix.yaml: {name}.{key} repeats its default {default!r}"
                )


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("compress", "xz_level", 12, "compress.xz_level: expected a whole number from 0 to 9, got 12"),
        ("boot_test", "until", "kernel", "boot_test.until: expected one of: systemd, login, got 'kernel'"),
        ("boot_test", "accelerator", "hvf", "boot_test.accelerator: expected one of: auto, kvm, tcg, got 'hvf'"),
        ("build", "mirror", "ftp://x", "build.mirror: expected an http:// or https:// URL, got 'ftp://x'"),
    ],
)
def test_settings_are_checked_as_the_schema_says(tmp_path, section, key, value, message):
    assert error_for(tmp_path, lambda d: d.setdefault(section, {}).update({key: value})) == message


def test_a_matrix_without_ci_section_gives_build_jobs_the_common_tags(tmp_path):
    data = copy.deepcopy(GOOD)
    del data["ci"]
    m = matrix.load(write(tmp_path, data))
    assert m.ci.runner_tags("amd64") == () and m.ci.image == "$CI_REGISTRY_IMAGE/builder"


def test_a_platform_is_one_class_and_nothing_else(tmp_path, monkeypatch):
    """Declaring a Platform registers it: its settings are matrix.yaml's, checked and tabled, and
    `doit cleanup` asks it; nothing else names it."""
    from dataclasses import dataclass

    from tasks.release import platforms
    from tasks.release.platforms import Expired, Platform

    monkeypatch.setattr(platforms, "_REGISTERED", dict(platforms.registered()))

    @dataclass(frozen=True)
    class OpenStackSettings(settings.PlatformSettings):
        cloud: str = settings.required("the clouds.yaml entry", settings.text())
        public: bool = settings.setting(False, "share the image with every project", settings.boolean())

    class OpenStack(Platform):
        name = "nocloud"  # a vendor of the test matrix
        settings = OpenStackSettings

        @staticmethod
        def expired(settings, keep, architectures):
            return [Expired(OpenStack.name, settings.cloud, "c", "20261207-1", "an image")]

    data = copy.deepcopy(GOOD)
    data.setdefault("release", {})["platforms"] = {"nocloud": {"cloud": "mine"}}
    loaded = matrix.load(write(tmp_path, data))
    assert loaded.release.platforms["nocloud"] == OpenStackSettings(cloud="mine")
    assert "| `release.platforms.nocloud.cloud` | (required) | text | the clouds.yaml entry |" in settings.table()
    data["release"]["platforms"]["nocloud"] = {"cloud": "mine", "public": "yes"}
    assert error_for(tmp_path, lambda d: d.update(data)) == (
        "release.platforms.nocloud.public: expected true or false, got 'yes'"
    )
    from tasks.model import plan
    from tasks.release import cleanup

    options = {"matrix": str(tmp_path / "matrix.yaml"), "workdir": str(tmp_path / "w"), "storage": str(tmp_path)}
    write(tmp_path, {**data, "release": {"platforms": {"nocloud": {"cloud": "mine"}}}})
    found = cleanup.expired(plan.from_options(REPO, options.get))
    assert [item.describe() for item in found] == ["nocloud mine: an image c 20261207-1"]


def test_the_release_and_ci_sections_are_settings_like_the_others(tmp_path):
    """release, release.notify and ci are read through their declarations: defaults, checks, keys."""
    loaded = matrix.load(FIXTURE_MATRIX)
    assert loaded.release.instance_test == ("generic", "genericcloud", "ec2")
    data = copy.deepcopy(GOOD)
    data["release"] = {"instance_test": [], "notify": {"to": ["a@example.org"], "from": "b@example.org"}}
    data["ci"] = {"release_project": "", "tiers": {"schedule": "push"}}
    loaded = matrix.load(write(tmp_path, data))
    assert loaded.release.instance_test == (), "[]: no instance test"
    assert (loaded.release.notify.to, loaded.release.notify.sender) == (("a@example.org",), "b@example.org")
    assert (loaded.ci.release_project, loaded.ci.push_tier, loaded.ci.schedule_tier) == ("", "push", "push")
    assert error_for(tmp_path, lambda d: d.update(release={"notify": {"to": ["a@example.org"]}})) == (
        "release.notify.from: missing (the sender of the release mail)"
    )
    assert error_for(tmp_path, lambda d: d.update(release={"instance_test": ["nocloud", "openstack"]})) == (
        "release.instance_test[1]: unknown vendor 'openstack' (expected one of: " + ", ".join(GOOD["vendors"]) + ")"
    )
    assert error_for(tmp_path, lambda d: d.update(ci={"tiers": {"nightly": "full"}})) == (
        "ci.tiers.nightly: unknown key (expected one of: push, schedule)"
    )
