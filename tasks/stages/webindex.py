"""The storage's web index: static HTML pages at its root, for each release and for each version, made
with Jinja2 from the same scan as the catalogue (tasks/stages/catalogue.py).

    index.html                          the releases, and the version `latest` names in each stream
    <release>/index.html                the release's versions, newest first, `latest` marked
    <release>/daily/<version>/index.html, <release>/<version>/index.html
                                        each image: its date, size and SHA-512, its formats, the
                                        signature, SHA512SUMS, SBOMs, changes, provenance, manifest
                                        (written with its version: it says nothing that a later
                                        publication changes, such as which version is latest)

Links are relative and name index.html itself, and the pages use no script: they read the same from
file://, from nginx and from a bucket's website endpoint.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field

import jinja2

from tasks.stages import incus, publish, sbom
from tasks.stages.catalogue import DAILY, VersionDir
from tasks.system.signing import SIGNATURE_SUFFIX

PAGE = "index.html"
# What each published file is, by the end of its public name (tasks/stages/publish.py): its label on the page.
COMPANIONS = {
    publish.MANIFEST_SUFFIX: "manifest",
    sbom.PUBLIC_SUFFIX["spdx"]: "SBOM (SPDX)",
    sbom.PUBLIC_SUFFIX["cdx"]: "SBOM (CycloneDX)",
    publish.PROVENANCE_SUFFIX: "provenance",
    publish.CHANGES_SUFFIX["txt"]: "changes",
    publish.CHANGES_SUFFIX["json"]: "changes (JSON)",
    incus.SUFFIX: "Incus/LXD metadata",
}
_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("tasks.stages", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass
class Image:
    name: str  # debian-12-nocloud-amd64-<version>
    files: list[tuple[str, str]] = field(default_factory=list)  # (label, name): the formats first
    sha512: dict[str, str] = field(default_factory=dict)  # image file -> SHA-512
    sizes: dict[str, int] = field(default_factory=dict)  # image file -> bytes


def _date(version: str) -> str:
    return f"{version[:4]}-{version[4:6]}-{version[6:8]}"


def _images(found: VersionDir, sizes: dict[str, int]) -> list[Image]:
    images: dict[str, Image] = {}
    for name, digest in sorted(found.files.items()):
        parts = publish.public_name_parts(name)
        if parts is None:
            continue
        image_name, suffix = parts
        image = images.setdefault(image_name, Image(image_name))
        if publish.is_image(name):
            image.files.insert(sum(1 for label, _ in image.files if label.startswith(".")), (f".{suffix}", name))
            image.sha512[name] = digest
            if name in sizes:
                image.sizes[name] = sizes[name]
        else:
            image.files.append((COMPANIONS.get(suffix, suffix), name))
    return sorted(images.values(), key=lambda i: i.name)


def pages(
    found: list[VersionDir],
    latest: dict[tuple[str, str], str],
    sizes: dict[str, int],
    versions: Iterable[str] | None = None,
) -> dict[str, str]:
    """The pages by path: the root's and each release's, and those of the version directories named
    in versions (every one when None). latest: (release, stream) -> the version `latest` names;
    sizes: path -> bytes of the image files."""
    releases = sorted({f.release for f in found})
    written = {
        PAGE: _ENVIRONMENT.get_template("root.html.j2").render(releases=releases, latest=latest, page=PAGE, daily=DAILY)
    }
    for release in releases:
        mine = sorted((f for f in found if f.release == release), key=lambda f: f.version, reverse=True)
        written[f"{release}/{PAGE}"] = _ENVIRONMENT.get_template("release.html.j2").render(
            release=release,
            versions=[(f, posixpath.relpath(f.directory, release), _date(f.version)) for f in mine],
            latest=latest,
            page=PAGE,
            daily=DAILY,
        )
    chosen = None if versions is None else set(versions)
    for f in found:
        if chosen is not None and f.directory not in chosen:
            continue
        local = {posixpath.basename(p): size for p, size in sizes.items() if posixpath.dirname(p) == f.directory}
        depth = f.directory.count("/") + 1
        written[f"{f.directory}/{PAGE}"] = _ENVIRONMENT.get_template("version.html.j2").render(
            found=f,
            date=_date(f.version),
            images=_images(f, local),
            sums=publish.SUMS,
            signature=publish.SUMS + SIGNATURE_SUFFIX,
            up="../" * (depth - 1) + PAGE,
            release_page=posixpath.relpath(f"{f.release}/{PAGE}", f.directory),
            page=PAGE,
        )
    return written
