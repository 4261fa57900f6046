"""tasks/stages/provenance.py: the in-toto statement of an image, and what it records."""

import dataclasses
import json
import os
import shutil

from tasks.model.records import BuildInfo, Manifest
from tasks.stages import faiconfig, provenance

from .conftest import REPO


def test_the_statement_names_the_image_files_and_everything_the_build_used(nocloud, repo_matrix):
    cell, files = nocloud
    statement = json.loads(files.provenance.read_text())
    manifest = Manifest.read(files.manifest)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [{"name": a["name"], "digest": {"sha512": a["sha512"]}} for a in manifest.artifacts]
    definition = statement["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["cell"] == cell.name
    # The settings as the build recorded them.
    assert definition["externalParameters"]["settings"] == json.loads(files.build_info.read_text())["settings"]
    assert definition["externalParameters"]["settings"]["fai_classes"] == list(cell.fai_classes)
    dependencies = {d["name"]: d for d in definition["resolvedDependencies"]}
    assert dependencies["project"]["digest"] == {"gitCommit": "0" * 40}
    assert dependencies["config-space"]["digest"] == {"sha256": "1" * 64}
    assert dependencies["base"]["digest"] == {"sha256": "2" * 64}
    release = dependencies["deb.debian.org_debian_dists_bookworm_InRelease"]
    assert release["uri"] == "http://deb.debian.org/debian/dists/bookworm/InRelease"
    assert release["digest"] == {"sha256": "3" * 64} and release["annotations"] == {"date": "Sat"}
    run = statement["predicate"]["runDetails"]
    assert run["metadata"]["startedOn"] == "2026-11-25T12:00:00+00:00"
    assert run["metadata"]["finishedOn"] == "2026-11-25T12:01:30+00:00"
    assert run["builder"]["id"] == "test"


def test_a_changed_config_space_changes_the_statement(nocloud, repo_matrix, tmp_path):
    cell, files = nocloud
    space = tmp_path / "fai_config"
    shutil.copytree(REPO / "fai_config", space, symlinks=True)
    before = faiconfig.tree_digest(space)
    # Times and owners of a checkout play no part; content and the executable bit do.
    os.utime(space / "class" / "DEBIAN.var", (0, 0))
    faiconfig._files_by_owner.cache_clear()
    assert faiconfig.tree_digest(space) == before
    script = space / "scripts" / "LAST" / "90-clean"
    script.write_text(script.read_text() + "\n# one more line\n")
    faiconfig._files_by_owner.cache_clear()
    changed = faiconfig.tree_digest(space)
    assert changed != before
    script.chmod(0o644)
    faiconfig._files_by_owner.cache_clear()
    assert faiconfig.tree_digest(space) not in (before, changed)

    # The build records the digest; the statement carries it.
    info = BuildInfo.read(files.build_info)
    first = provenance.statement(cell, Manifest.read(files.manifest), info)
    rebuilt = dataclasses.replace(info, inputs={**info.inputs, "config_space_sha256": changed})
    second = provenance.statement(cell, Manifest.read(files.manifest), rebuilt)
    assert first != second
    digests = {d["name"]: d.get("digest") for d in second["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert digests["config-space"] == {"sha256": changed}
