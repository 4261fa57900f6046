"""The provenance stage: where an image came from, as an in-toto Statement (v1)
with an SLSA provenance (v1) predicate.

The subjects are the image files users download (their SHA-512 from the
manifest). The build definition names the cell, its settings and classes
as the build recorded them;
its resolved dependencies are this project's git commit, the config space's
tree digest, the shared base tarball, FAI and every Release file apt used
(digest and date: the exact archive state the packages came from). The run
details name the builder (the CI job or the host) and the build's start and
end. All of it was recorded by the build itself (build-info.json).

This stage writes the statement unsigned: the build jobs hold no key. The
publish stage wraps it in a DSSE envelope signed with the publishing key
(tasks/system/signing.py) and publishes it beside the image.
"""

from __future__ import annotations

from tasks.model.layout import CellFiles
from tasks.model.matrix import Cell
from tasks.model.records import BuildInfo, Manifest
from tasks.stages import identity
from tasks.system import atomic

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = f"{identity.NAMESPACE_URL}/build-types/fai-diskimage/v1"
# The payload type of a DSSE envelope holding an in-toto statement.
PAYLOAD_TYPE = "application/vnd.in-toto+json"


def release_file_url(list_name: str) -> str:
    """apt's list file name back to its URL: deb.debian.org_debian_dists_bookworm_InRelease."""
    return "http://" + list_name.replace("_", "/")


def statement(cell: Cell, manifest: Manifest, info: BuildInfo) -> dict:
    """The statement, from what the build recorded (not from today's matrix)."""
    subjects = [{"name": a["name"], "digest": {"sha512": a["sha512"]}} for a in manifest.artifacts]
    dependencies = [
        {
            "name": "project",
            "uri": f"git+{identity.NAMESPACE_URL}",
            "digest": {"gitCommit": info.inputs["project_commit"]},
        },
        {"name": "config-space", "uri": "file:fai_config", "digest": {"sha256": info.inputs["config_space_sha256"]}},
        *(
            [{"name": "base", "uri": f"file:{cell.base_name}.tar", "digest": {"sha256": info.inputs["base_sha256"]}}]
            if "base_sha256" in info.inputs
            else []  # built without the shared base: FAI ran debootstrap
        ),
        {"name": "fai", "uri": f"pkg:deb/debian/fai-server@{info.builder.get('fai', 'unknown')}"},
        *(
            {
                "name": release["name"],
                "uri": release_file_url(release["name"]),
                "digest": {"sha256": release["sha256"]},
                "annotations": {"date": release["date"]},
            }
            for release in info.apt_releases
        ),
    ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "cell": cell.name,
                    "version": manifest.version,
                    "settings": info.settings,
                },
                "internalParameters": {
                    "source_date_epoch": info.source_date_epoch,
                    "mirror": info.mirror,
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": info.builder.get("id", "unknown"),
                    "version": {k: v for k, v in info.builder.items() if k != "id"},
                },
                "metadata": {
                    "invocationId": f"{cell.name}/{manifest.version}",
                    "startedOn": info.build_started,
                    "finishedOn": info.build_finished,
                },
            },
        },
    }


def write(cell: Cell, files: CellFiles) -> None:
    manifest = Manifest.read(files.manifest)
    info = BuildInfo.read(files.build_info)
    atomic.write_json(files.provenance, statement(cell, manifest, info))
