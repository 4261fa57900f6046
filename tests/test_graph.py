"""The doit task graph: which tasks exist, their files, deps and up-to-date checks."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from doit.task import Stream
from doit.tools import config_changed

from tasks import graph, registry
from tasks.model import options as option_table
from tasks.model import plan
from tasks.model.matrix import BuildSettings, MatrixError, Release
from tasks.stages import base, boottest, compress, fai, faiconfig, manifest, sbom, stepcache

from . import finished

REPO = Path(__file__).resolve().parent.parent
# The unit tests' own matrix (tests/data/matrix.yaml), not the project's.
FIXTURE_MATRIX = REPO / "tests" / "data" / "matrix.yaml"


def make_plan(tmp_path, **options):
    options.setdefault("workdir", str(tmp_path / "build"))
    options.setdefault("matrix", str(FIXTURE_MATRIX))
    return plan.from_options(REPO, options.get, options)


def load(p) -> dict:
    return graph.load_tasks(p)


CHAIN = [stage.name for stage in registry.cell_chain()]
VERSION_FORM = "YYYYMMDD-N (a date, a dash and a serial number, e.g. 20261207-0600)"


def config_of(task) -> dict:
    """The configuration the task's config_changed up-to-date check compares."""
    [check] = [check for check, _, _ in task.uptodate if isinstance(check, config_changed)]
    return check.config


def test_every_cell_has_every_stage(tmp_path, test_matrix):
    tasks = load(make_plan(tmp_path))
    for cell in test_matrix.cells:
        for stage in CHAIN:
            assert f"{stage}:{cell.name}" in tasks


@pytest.mark.parametrize(
    "tier, expected",
    [
        ("push", ["bookworm-genericcloud-amd64", "bookworm-nocloud-amd64"]),
        ("full", None),
    ],
)
def test_stage_groups_cover_the_tier(tmp_path, test_matrix, tier, expected):
    tasks = load(make_plan(tmp_path, tier=tier))
    expected = expected or [c.name for c in test_matrix.cells]
    for stage in CHAIN:
        # Known-failing cells (matrix.yaml's known_failures) take part through their xfail task.
        assert tasks[stage].task_dep == [
            f"{'xfail-' if test_matrix.known_failure(test_matrix.cell(name)) else ''}{stage}:{name}"
            for name in expected
        ]
        assert tasks[stage].actions == []


def test_files_chain_the_stages(tmp_path):
    tasks = load(make_plan(tmp_path))
    cell_dir = tmp_path / "build" / "bookworm-genericcloud-amd64"
    f = lambda name: str(cell_dir / name)  # noqa: E731
    build, sbom, comp, boot, man, prov, pub = (tasks[f"{s}:bookworm-genericcloud-amd64"] for s in CHAIN)
    records = ["build.log", "packages.tsv", "facts.json", "dpkg-status", "apt-releases.tsv", "changelogs.tar"]
    assert build.targets == [f("disk.raw"), *map(f, records), f("build-info.json")]
    assert str(tmp_path / "build" / "base" / "bookworm-amd64.tar.zst") in build.file_dep
    assert sbom.file_dep == {f("dpkg-status"), f("build-info.json")}
    assert sbom.targets == [f("sbom.spdx.json"), f("sbom.cdx.json")]
    assert comp.file_dep == {f("disk.raw")} and comp.targets == [f("image.tar.xz"), f("image.qcow2")]
    assert boot.file_dep == {f("disk.raw")}
    assert boot.targets == [f("boot-bios.log"), f("boot-uefi.log"), f("boottest.json")]
    assert man.file_dep == {
        f("disk.raw"),
        f("image.tar.xz"),
        f("image.qcow2"),
        f("packages.tsv"),
        f("facts.json"),
        f("build-info.json"),
        f("boottest.json"),
        f("sbom.spdx.json"),
        f("sbom.cdx.json"),
    }
    assert man.targets == [f("manifest.json")]
    assert prov.file_dep == {f("manifest.json"), f("build-info.json")}
    assert prov.targets == [f("provenance.json")]
    assert pub.file_dep == {
        f("image.tar.xz"),
        f("image.qcow2"),
        f("manifest.json"),
        f("sbom.spdx.json"),
        f("sbom.cdx.json"),
        f("provenance.json"),
        f("dpkg-status"),
        f("changelogs.tar"),
    }
    assert pub.targets == [f("published.json")]


def test_build_depends_on_its_classes_files_only(tmp_path):
    tasks = load(make_plan(tmp_path))
    space = REPO / "fai_config"
    nocloud = {
        Path(p).relative_to(space).as_posix()
        for p in tasks["build:bookworm-nocloud-amd64"].file_dep
        if Path(p).is_relative_to(space)
    }
    cloud = {
        Path(p).relative_to(space).as_posix()
        for p in tasks["build:bookworm-genericcloud-amd64"].file_dep
        if Path(p).is_relative_to(space)
    }
    assert "scripts/NOCLOUD/10-password" in nocloud and "scripts/NOCLOUD/10-password" not in cloud
    assert "package_config/CLOUD" in cloud and "package_config/CLOUD" not in nocloud
    assert "class/BOOKWORM.var" in nocloud and "class/TRIXIE.var" not in nocloud


def test_up_to_date_configuration(tmp_path):
    base = load(make_plan(tmp_path))
    faster = load(make_plan(tmp_path, xz_level="1"))
    name = "bookworm-nocloud-amd64"
    assert config_of(base[f"build:{name}"]) == config_of(faster[f"build:{name}"])
    assert config_of(base[f"compress:{name}"]) != config_of(faster[f"compress:{name}"])
    assert config_of(base[f"build:{name}"]) != config_of(base["build:bookworm-genericcloud-amd64"])
    assert config_of(base[f"build:{name}"])["fai_classes"][-1] == "LAST"


def test_builds_without_the_step_cache_are_not_stale(tmp_path):
    """step_cache=no changes how a build runs, not what it makes: the build task stays up to date."""
    on, off = make_plan(tmp_path), make_plan(tmp_path, step_cache="no")
    cell = on.matrix.cell("bookworm-nocloud-amd64")

    def step_cache(the_plan):
        return registry.build_inputs(registry.cell_context(the_plan, cell)).step_cache

    assert step_cache(on) == stepcache.directory(on.workdir, cell.name)
    assert step_cache(off) is None
    assert config_of(load(on)[f"build:{cell.name}"]) == config_of(load(off)[f"build:{cell.name}"])


def run_task(task, monkeypatch, module, function: str) -> dict:
    """Run a task's actions as doit does, with module.function standing in for
    the stage: the keyword and positional arguments it was called with."""
    called: dict = {}
    monkeypatch.setattr(module, function, lambda *args, **kwargs: called.update(args=args, kwargs=kwargs))
    assert task.execute(Stream(0)) is None
    return called


def test_platform_images_boot_until_systemd(tmp_path, monkeypatch):
    tasks = load(make_plan(tmp_path))
    assert config_of(tasks["boottest:bookworm-nocloud-amd64"])["until"] == "login"
    for cell in ("trixie-ec2-amd64", "sid-azure-arm64", "bookworm-gce-amd64"):
        assert config_of(tasks[f"boottest:{cell}"])["until"] == "systemd"
        settings = run_task(tasks[f"boottest:{cell}"], monkeypatch, boottest, "boot_test")["args"][2]
        assert settings.until == "systemd", "the boot test itself waits for what its configuration says"


def test_publish_checks_storage(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGES_SIGNING_FINGERPRINT", raising=False)
    tasks = load(make_plan(tmp_path, storage=str(tmp_path / "public")))
    task = tasks["publish:bookworm-nocloud-amd64"]
    assert config_of(task) == {"storage": (tmp_path / "public").as_uri(), "keep_dailies": 14, "signed_by": None}
    # A signing key configured later publishes again, signed.
    monkeypatch.setenv("IMAGES_SIGNING_FINGERPRINT", "A" * 40)
    signed = load(make_plan(tmp_path, storage=str(tmp_path / "public")))["publish:bookworm-nocloud-amd64"]
    assert config_of(signed)["signed_by"] == "A" * 40
    [(check, args)] = [(c, a) for c, a, _ in task.uptodate if getattr(c, "__name__", "") == "still_published"]
    assert args == [
        str(tmp_path / "build" / "bookworm-nocloud-amd64" / "published.json"),
        (tmp_path / "public").as_uri(),
    ]
    assert check(*args) is False, "nothing was published: the task is stale"


def test_vendors_and_architectures_select_their_own_files(tmp_path):
    tasks = load(make_plan(tmp_path))
    space = REPO / "fai_config"

    def files(cell):
        return {
            Path(p).relative_to(space).as_posix()
            for p in tasks[f"build:{cell}"].file_dep
            if Path(p).is_relative_to(space)
        }

    ec2, gce, arm = files("trixie-ec2-amd64"), files("trixie-gce-amd64"), files("trixie-ec2-arm64")
    assert "package_config/EC2" in ec2 and "package_config/EC2" not in gce
    assert "files/etc/systemd/timesyncd.conf.d/01_debian_cloud.conf/GCE" in gce - ec2
    assert "package_config/ARM64" in arm and "package_config/AMD64" not in arm
    assert "package_config/AMD64" in ec2 and "package_config/ARM64" not in ec2
    # Combined classes: a vendor's file for one architecture only.
    assert "files/etc/default/grub.d/20_console.cfg/EC2+ARM64" in arm - ec2
    assert "lib/grub.sh" in ec2 & arm  # shared by every class
    # The in-build checks are this project's Python: a build depends on them too.
    assert str(fai.IN_BUILD_MODULES[0]) in tasks["build:trixie-ec2-amd64"].file_dep


def test_one_base_per_release_and_architecture(tmp_path, test_matrix):
    tasks = load(make_plan(tmp_path, tier="full"))
    bases = sorted(name for name in tasks if name.startswith("base:"))
    assert bases == sorted(f"base:{r}-{a}" for r in test_matrix.releases for a in test_matrix.architectures)
    for cell in test_matrix.cells:
        tarball = str(tmp_path / "build" / "base" / f"{cell.base_name}.tar.zst")
        assert tarball in tasks[f"build:{cell.name}"].file_dep
        assert tasks[f"base:{cell.base_name}"].targets[0] == tarball
    assert tasks["base"].task_dep == [
        f"base:{r}-{a}" for r in sorted(test_matrix.releases) for a in sorted(test_matrix.architectures)
    ]
    assert load(make_plan(tmp_path))["base"].task_dep == ["base:bookworm-amd64"]


def test_the_base_holds_the_packages_every_image_gets(tmp_path, monkeypatch):
    space = tmp_path / "space"
    (space / "package_config").mkdir(parents=True)
    (space / "package_config" / "DEBIAN").write_text(
        "# every image\nPACKAGES install-norec\nsystemd-sysv udev  # init\nlibc6:amd64 sudo\n"
        "PACKAGES install BOOKWORM\nifupdown\nPACKAGES install\nopenssh-server udev\n"
        "PACKAGES remove\nnano\n"
    )
    (space / "package_config" / "AMD64").write_text(
        "PACKAGES install-norec\ngrub-cloud-amd64\nPACKAGES install-norec LINUX_CLOUD\nlinux-image-cloud-amd64\n"
        "PACKAGES install-norec TRIXIE BOOKWORM\ndosfstools\n"
    )
    lists = faiconfig.package_lists(space)
    assert base.installed_by(lists, ("DEBIAN",)) == ("systemd-sysv", "udev", "sudo", "openssh-server")
    # A section applies when any class it names is one every image of the base has.
    assert base.installed_by(lists, ("DEBIAN", "BOOKWORM", "AMD64")) == (
        "systemd-sysv",
        "udev",
        "sudo",
        "ifupdown",
        "openssh-server",
        "grub-cloud-amd64",
        "dosfstools",
    )

    tasks = load(make_plan(tmp_path))
    config = config_of(tasks["base:bookworm-amd64"])
    repo_lists = faiconfig.package_lists(REPO / "fai_config")
    assert config["include"] == list(base.installed_by(repo_lists, ("DEBIAN", "BOOKWORM", "AMD64")))
    assert {"netplan.io", "unattended-upgrades", "grub-cloud-amd64"} <= set(config["include"])
    assert not {"linux-image-amd64", "libnss-resolve", "cloud-init"} & set(config["include"])
    content = run_task(tasks["base:bookworm-amd64"], monkeypatch, base, "build")["args"][-1]
    assert content.include == tuple(config["include"])


def test_the_base_knows_what_each_of_its_images_installs_beyond_it(tmp_path, test_matrix):
    """Each image's own selection reaches the base's check of what they share (the base installs
    what apt would install for all of them alike): one per distinct selection, from every vendor of
    the matrix whatever the tier. A vendor's list edited changes the selections the check
    resolves, not the base's configuration."""
    space = tmp_path / "space"
    shutil.copytree(REPO / "fai_config", space)
    the_plan = dataclasses.replace(make_plan(tmp_path), config_space=space)
    task = load(the_plan)["base:bookworm-amd64"]
    config, shares = config_of(task), finished.shares_check(task)
    images = [cell for cell in test_matrix.cells if cell.base_name == "bookworm-amd64"]
    lists = faiconfig.package_lists(space)
    expected = {
        tuple(p for p in base.installed_by(lists, cell.fai_classes) if p not in config["include"]) for cell in images
    }
    assert sorted(shares.selections) == sorted(expected)
    assert shares.include == tuple(config["include"])
    assert len(images) > 1 and len(expected) > 1  # the fixture has vendors that differ
    for selection in shares.selections:
        assert not set(selection) & set(config["include"])
        assert any(name.startswith("linux-image-") for name in selection)  # every image names its kernel
    # The push tier's base is the full tier's.
    full = load(dataclasses.replace(make_plan(tmp_path, tier="full"), config_space=space))["base:bookworm-amd64"]
    assert config_of(full) == config and finished.shares_check(full) == shares

    time_chrony = space / "package_config" / "TIME_CHRONY"
    time_chrony.write_text(time_chrony.read_text() + "ntpsec-ntpdate\n")
    after = load(the_plan)["base:bookworm-amd64"]
    assert any("TIME_CHRONY" in cell.fai_classes for cell in images)
    assert config_of(after) == config
    assert any("ntpsec-ntpdate" in selection for selection in finished.shares_check(after).selections)


def test_the_base_is_upgraded_from_the_suites_its_release_class_names(tmp_path):
    settings = BuildSettings()
    bookworm, sid = Release("bookworm", "12"), Release("sid", "sid")
    assert base.build_sources(REPO / "fai_config", bookworm, settings) == (
        f"deb {settings.mirror} bookworm main",
        f"deb {settings.mirror} bookworm-updates main",
        f"deb {settings.security_mirror} bookworm-security main",
    )
    assert base.build_sources(REPO / "fai_config", sid, settings) == (f"deb {settings.mirror} sid main",)

    # The suites come from the config space: editing them makes the base again.
    space = tmp_path / "space"
    shutil.copytree(REPO / "fai_config", space)
    the_plan = dataclasses.replace(make_plan(tmp_path), config_space=space)
    before = config_of(load(the_plan)["base:bookworm-amd64"])
    assert before["upgrade_from"] == list(base.build_sources(space, bookworm, settings))
    var = space / "class" / "BOOKWORM.var"
    var.write_text(var.read_text().replace('APT_SUITES="bookworm bookworm-updates"', 'APT_SUITES="bookworm"'))
    after = config_of(load(the_plan)["base:bookworm-amd64"])
    assert after["upgrade_from"] == [
        f"deb {settings.mirror} bookworm main",
        f"deb {settings.security_mirror} bookworm-security main",
    ]
    assert after != before


def test_known_failures_join_the_groups_through_xfail_tasks(tmp_path, monkeypatch):
    import yaml

    data = yaml.safe_load((FIXTURE_MATRIX).read_text())
    data["known_failures"] = [{"cells": "bookworm-nocloud-*", "reason": "testing"}]
    matrix_file = tmp_path / "matrix.yaml"
    matrix_file.write_text(yaml.safe_dump(data, sort_keys=False))
    tasks = load(make_plan(tmp_path, matrix=str(matrix_file)))
    assert tasks["boottest"].task_dep == [
        "boottest:bookworm-genericcloud-amd64",
        "xfail-boottest:bookworm-nocloud-amd64",
    ]
    xfail = tasks["xfail-boottest:bookworm-nocloud-amd64"]
    cell_dir = tmp_path / "build" / "bookworm-nocloud-amd64"
    assert xfail.targets == [str(cell_dir / "xfail-boottest.json")]
    assert xfail.file_dep == tasks["build:bookworm-nocloud-amd64"].file_dep
    # It runs the cell's stages up to boottest, writing none of the files the cell's own tasks make:
    # its stages' files go to a directory of its own.
    ran, written_to = [], set()
    for name, module, function in (
        ("build", fai, "build"),
        ("sbom", sbom, "generate"),
        ("compress", compress, "compress"),
        ("boottest", boottest, "boot_test"),
        ("manifest", manifest, "write"),
    ):

        def stand_in(cell, files, *args, name=name):
            ran.append(name)
            written_to.add(files.dir)

        monkeypatch.setattr(module, function, stand_in)
    assert xfail.execute(Stream(0)) is None
    assert ran == ["build", "sbom", "compress", "boottest"]
    assert written_to == {cell_dir / "xfail-boottest"}
    record = json.loads((cell_dir / "xfail-boottest.json").read_text())
    assert record["outcome"] == "unexpected success"
    assert "xfail-build:bookworm-genericcloud-amd64" not in tasks


def test_actions_are_module_level_functions(tmp_path):
    """Closures do not survive doit's process pool (spawn, forkserver)."""
    import pickle

    tasks = load(make_plan(tmp_path))
    for name, task in tasks.items():
        for action in task.actions:
            try:
                pickle.dumps((action.py_callable, action.args))
            except (pickle.PicklingError, AttributeError, TypeError) as error:
                pytest.fail(f"{name}: its action cannot go to a worker process: {error}")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"xz_level": "12"}, "command line: xz_level: expected a whole number from 0 to 9, got '12'"),
        ({"step_cache": "off"}, "command line: step_cache: expected yes or no, got 'off'"),
        ({"confirm": "ye"}, "command line: confirm: expected yes or no, got 'ye'"),
        ({"protected": "maybe"}, "command line: protected: expected yes or no, got 'maybe'"),
        *(
            ({"version": given}, f"command line: version: expected a version {VERSION_FORM}, got {given!r}")
            for given in ("2026 11", "rc1", "latest", "20261332-1", "20261207-", "20261207-1234567890")
        ),
        ({"tier": "nightly"}, "tiers: no tier named 'nightly' (expected one of: push, full)"),
        (
            {"storage": "ftp://host/images"},
            "command line: storage: expected a directory or a file://, http://, https://, s3:// URL, got 'ftp://host/images'",
        ),
        (
            {"worddir": "/x"},
            f"command line: worddir: unknown option (expected one of: {', '.join(option_table.BY_NAME)})",
        ),
    ],
)
def test_bad_options(tmp_path, options, message):
    with pytest.raises(MatrixError) as caught:
        make_plan(tmp_path, **options)
    assert str(caught.value).endswith(message)


@pytest.mark.parametrize(
    "option, field, default",
    [("step_cache", "step_cache", True), ("confirm", "confirmed", False), ("protected", "protected", False)],
)
def test_yes_or_no_options_read_alike(tmp_path, option, field, default):
    """One reader for every yes/no option: GitLab's true/false (protected=$CI_COMMIT_REF_PROTECTED) and 1/0 too."""
    for value, expected in [("yes", True), ("True", True), ("1", True), ("NO", False), ("false", False), ("0", False)]:
        assert getattr(make_plan(tmp_path, **{option: value}), field) is expected, value
    assert getattr(make_plan(tmp_path, **{option: ""}), field) is default  # a CI variable that is not set
    assert getattr(make_plan(tmp_path), field) is default


def test_version_defaults_to_the_run_start(tmp_path):
    p = make_plan(tmp_path)
    assert len(p.build_version) == len("20261125-1532") and p.build_version[8] == "-"
    assert p.version is None
    given = make_plan(tmp_path, version="20261207-7")
    assert (given.build_version, given.version) == ("20261207-7", "20261207-7")


def test_given_version_remakes_manifests_not_images(tmp_path):
    base, given = load(make_plan(tmp_path)), load(make_plan(tmp_path, version="20261207-7"))
    name = "bookworm-nocloud-amd64"
    assert config_of(base[f"build:{name}"]) == config_of(given[f"build:{name}"])
    assert config_of(base[f"manifest:{name}"]) != config_of(given[f"manifest:{name}"])


def test_a_class_the_config_space_does_not_know_is_refused(tmp_path):
    import yaml

    data = yaml.safe_load(FIXTURE_MATRIX.read_text())
    data["vendors"]["ec2"]["fai_classes"] = ["CLOUD", "EC3", "LINUX_CLOUD", "TIME_SYSTEMD"]
    matrix_file = tmp_path / "matrix.yaml"
    matrix_file.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(MatrixError) as caught:
        make_plan(tmp_path, matrix=str(matrix_file))
    assert str(caught.value) == (
        f"{matrix_file}: vendors.ec2.fai_classes[1]: no file of the config space (fai_config/) belongs to class 'EC3'"
    )


def test_each_on_demand_command_has_one_help_line(tmp_path):
    """doit list shows the HELP its module declares, once: no second text in a docstring or a doc field."""
    from tasks import commands

    tasks = graph.load_tasks(make_plan(tmp_path))
    for command in commands.COMMANDS:
        assert tasks[command.NAME].doc == command.HELP, command.NAME
    assert commands.WORKDIR_FREE == {"compare", "changes", "verify", "cleanup", "catalogue", "images"}
