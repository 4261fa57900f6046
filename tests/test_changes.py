"""tasks/stages/changes.py: package changes between published versions."""

import gzip
import io
import json
import tarfile

from tasks import actions
from tasks.commands import changes as changes_command
from tasks.model import plan
from tasks.stages import changes, manifest, provenance
from tasks.stages import publish as publication
from tasks.storage import Location

from .conftest import REPO, fake_outputs

BASH_CHANGELOG = b"""bash (5.2.15-2.1) unstable; urgency=medium

  * Fix the prompt on wide terminals. Closes: #1000001

 -- Maintainer <m@example.org>  Sat, 22 Nov 2026 10:00:00 +0000

bash (5.2.15-2) unstable; urgency=medium

  * The version before.

 -- Maintainer <m@example.org>  Mon, 01 Jan 2024 10:00:00 +0000
"""


def add_changelog(tar_path, path: str, text: bytes) -> None:
    with tarfile.open(tar_path, "w") as tar:
        data = gzip.compress(text)
        info = tarfile.TarInfo(path)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def publish_version(cell, tmp_path, version, packages_tsv):
    from .test_storage import FAST

    files = fake_outputs(tmp_path / version, cell, version=version)
    files.packages.write_text(packages_tsv)
    # dpkg's status as the build keeps it: a binNMU names its source version.
    stanzas = []
    for line in packages_tsv.splitlines():
        name, binary, arch = line.split("\t")
        source = f"\nSource: {name} ({binary.split('+b')[0]})" if "+b" in binary else ""
        stanzas.append(f"Package: {name}\nVersion: {binary}\nArchitecture: {arch}{source}\n")
    files.dpkg_status.write_text("\n".join(stanzas))
    add_changelog(files.changelogs, "usr/share/doc/bash/changelog.Debian.gz", BASH_CHANGELOG)
    manifest.write(cell, files)
    provenance.write(cell, files)
    publication.publish(cell, files, Location((tmp_path / "public").as_uri()), FAST)
    return files


def test_two_publications_with_one_upgrade_name_exactly_that_change(repo_matrix, tmp_path):
    cell = repo_matrix.cell("bookworm-nocloud-amd64")
    first = publish_version(
        cell, tmp_path, "20261124-1200", "base-files\t12.4+deb12u8\tamd64\nbash\t5.2.15-2+b7\tamd64\n"
    )
    text = first.changes("txt").read_text()
    assert text == "debian-12-nocloud-amd64-20261124-1200: first version (nothing published before to compare with)\n"
    assert json.loads(first.changes("json").read_text())["first_version"] is True

    second = publish_version(
        cell, tmp_path, "20261125-1200", "base-files\t12.4+deb12u8\tamd64\nbash\t5.2.15-2.1\tamd64\n"
    )
    found = json.loads(second.changes("json").read_text())
    assert found["previous_version"] == "20261124-1200"
    assert (found["added"], found["removed"], found["downgraded"]) == ([], [], [])
    [upgrade] = found["upgraded"]
    assert {k: upgrade[k] for k in ("name", "old", "new", "source")} == {
        "name": "bash",
        "old": "5.2.15-2+b7",
        "new": "5.2.15-2.1",
        "source": "bash",
    }
    # The entries after the old version, not the old version's own.
    assert len(upgrade["changelog"]) == 1 and "Closes: #1000001" in upgrade["changelog"][0]
    text = second.changes("txt").read_text()
    assert "upgraded   bash (amd64) 5.2.15-2+b7 -> 5.2.15-2.1  [source bash]" in text
    assert "0 added, 0 removed, 1 upgraded, 0 downgraded" in text
    assert "The version before." not in text
    # Published beside the image, listed in SHA512SUMS.
    daily = tmp_path / "public" / "bookworm" / "daily" / "20261125-1200"
    assert (daily / "debian-12-nocloud-amd64-20261125-1200.changes.txt").read_text() == text

    # doit changes: the same comparison, between any two versions in storage.
    the_plan = plan.from_options(REPO, {"storage": (tmp_path / "public").as_uri(), "workdir": str(tmp_path)}.get)
    from tasks import published

    shown = published.compare(the_plan, "bookworm-nocloud-amd64@20261124-1200", "bookworm-nocloud-amd64@20261125-1200")
    assert "upgraded   bash (amd64) 5.2.15-2+b7 -> 5.2.15-2.1" in shown


def test_added_removed_and_source_packages(tmp_path):
    status = tmp_path / "status"
    status.write_text(
        "Package: libc6\nVersion: 2.36-9+deb12u9\nArchitecture: amd64\nSource: glibc\n\n"
        "Package: zstd\nVersion: 1.5.4+dfsg2-5\nArchitecture: amd64\n"
    )
    old = changes.ImagePackages.of(
        "old", "1", [{"name": "vim-tiny", "version": "2:9.0.1378-2", "architecture": "amd64"}]
    )
    new = changes.ImagePackages.of(
        "new",
        "2",
        [
            {"name": "libc6", "version": "2.36-9+deb12u9", "architecture": "amd64"},
            {"name": "zstd", "version": "1.5.4+dfsg2-5", "architecture": "amd64"},
        ],
        status,
    )
    found = changes.compare(old, new)
    assert [(a["name"], a["source"]) for a in found["added"]] == [("libc6", "glibc"), ("zstd", "zstd")]
    assert [r["name"] for r in found["removed"]] == ["vim-tiny"]
    text = changes.render(found)
    assert "added      libc6 (amd64) 2.36-9+deb12u9  [source glibc]" in text
    assert "removed    vim-tiny (amd64) 2:9.0.1378-2" in text


def test_a_downgrade_is_not_an_upgrade():
    old = changes.ImagePackages.of("old", "1", [{"name": "a", "version": "1.10-1", "architecture": "all"}])
    new = changes.ImagePackages.of("new", "2", [{"name": "a", "version": "1.9-1", "architecture": "all"}])
    found = changes.compare(old, new)
    assert found["upgraded"] == [] and [d["new"] for d in found["downgraded"]] == ["1.9-1"]
    assert changes.render(changes.compare(new, new)).endswith("No package changed.\n")


def test_doit_changes_needs_two_images_and_names_a_missing_one(tmp_path):

    the_plan = plan.from_options(REPO, {"workdir": str(tmp_path), "storage": str(tmp_path / "public")}.get)
    failure = actions.run_stage("changes", changes_command.show, the_plan)
    assert "doit changes needs two images" in str(failure)
    both = plan.from_options(
        REPO,
        {
            "workdir": str(tmp_path),
            "storage": str(tmp_path / "public"),
            "left": "bookworm-nocloud-amd64@20261124-1200",
            "right": "bookworm-nocloud-amd64",
        }.get,
    )
    failure = actions.run_stage("changes", changes_command.show, both)
    assert "bookworm-nocloud-amd64@20261124-1200: published neither as a release nor as a daily" in str(failure)
