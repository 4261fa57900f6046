"""tasks/stages/sbom.py: real debsbom, validated by the formats' own libraries."""

import json
from pathlib import Path
from urllib.parse import unquote

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from tasks.model.layout import CellFiles
from tasks.stages import changes, manifest, sbom

from .conftest import fake_outputs

STATUS = """Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u9
Source: glibc
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Description: GNU C Library: Shared libraries

Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b7
Source: bash (5.2.15-2)
Maintainer: Matthias Klose <doko@debian.org>
Depends: libc6 (>= 2.36)
Description: GNU Bourne Again SHell

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2025b-0+deb12u1
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Description: time zone and daylight-saving time data
"""


def _deb(purl: str) -> PackageURL:
    return PackageURL.from_string(purl)


def binaries_and_sources_of_spdx(path: Path) -> dict[tuple[str, str, str], set[tuple[str, str]]]:
    """(name, version, arch) of each binary package -> the source packages that generate it."""
    data = json.loads(path.read_text())
    purls = {}
    for package in data["packages"]:
        for ref in package.get("externalRefs", []):
            if ref["referenceType"] == "purl":
                purls[package["SPDXID"]] = _deb(ref["referenceLocator"])
    found: dict[tuple[str, str, str], set[tuple[str, str]]] = {}
    for purl in purls.values():
        if purl.qualifiers.get("arch") != "source":
            found[(purl.name, unquote(purl.version or ""), purl.qualifiers["arch"])] = set()
    for relation in data["relationships"]:
        if relation["relationshipType"] == "GENERATES":
            source, binary = purls[relation["spdxElementId"]], purls[relation["relatedSpdxElement"]]
            key = (binary.name, unquote(binary.version or ""), binary.qualifiers["arch"])
            found[key].add((source.name, unquote(source.version or "")))
    return found


def binaries_and_sources_of_cdx(path: Path) -> dict[tuple[str, str, str], set[tuple[str, str]]]:
    """The same from CycloneDX: a binary depends on its source package (and on those
    its Built-Using field names, as signed boot loaders and kernels have)."""
    data = json.loads(path.read_text())
    depends = {d["ref"]: d.get("dependsOn", []) for d in data["dependencies"]}
    found = {}
    for component in data["components"]:
        purl = _deb(component["purl"])
        if purl.qualifiers.get("arch") == "source":
            continue
        sources = [_deb(ref) for ref in depends[component["bom-ref"]] if _deb(ref).qualifiers.get("arch") == "source"]
        key = (purl.name, unquote(purl.version or ""), purl.qualifiers["arch"])
        found[key] = {(source.name, unquote(source.version or "")) for source in sources}
    return found


def check_sboms(files: CellFiles) -> int:
    """Both SBOMs valid against their schemas, listing exactly packages.tsv's packages
    with their source packages as dpkg knows them. Returns the number of packages."""
    errors = validate_full_spdx_document(parse_file(str(files.sbom("spdx"))))
    assert errors == [], [e.validation_message for e in errors[:5]]
    cdx = json.loads(files.sbom("cdx").read_text())
    version = SchemaVersion.from_version(cdx["specVersion"])
    assert JsonStrictValidator(version).validate_str(files.sbom("cdx").read_text()) is None

    listed = {tuple(line.split("\t")) for line in files.packages.read_text().splitlines()}
    sources = changes.read_sources(files.dpkg_status)
    expected = {(name, version, arch): sources[name] for name, version, arch in listed}
    for document in (binaries_and_sources_of_spdx(files.sbom("spdx")), binaries_and_sources_of_cdx(files.sbom("cdx"))):
        assert document.keys() == expected.keys()  # exactly the packages of packages.tsv
        wrong = {package: found for package, found in document.items() if expected[package] not in found}
        assert wrong == {}, "each package's own source package and version, as dpkg knows them"
    return len(expected)


def test_sboms_of_a_cell_validate_and_list_its_packages_with_their_sources(repo_matrix, tmp_path):
    cell = repo_matrix.cell("bookworm-nocloud-amd64")
    files = fake_outputs(tmp_path / "build", cell)
    files.dpkg_status.write_text(STATUS)
    files.packages.write_text("bash\t5.2.15-2+b7\tamd64\nlibc6\t2.36-9+deb12u9\tamd64\ntzdata\t2025b-0+deb12u1\tall\n")
    sbom.generate(cell, files)
    assert check_sboms(files) == 3
    # bash is a binNMU: its source version is the one dpkg names, not the binary's.
    spdx = binaries_and_sources_of_spdx(files.sbom("spdx"))
    assert spdx[("bash", "5.2.15-2+b7", "amd64")] == {("bash", "5.2.15-2")}
    assert spdx[("libc6", "2.36-9+deb12u9", "amd64")] == {("glibc", "2.36-9+deb12u9")}

    # The same inputs make the same documents: no time or random number of the run.
    first = [path.read_bytes() for path in files.sboms]
    sbom.generate(cell, files)
    assert [path.read_bytes() for path in files.sboms] == first

    # The manifest references both, by public name, size and digest.
    manifest.write(cell, files)
    described = json.loads(files.manifest.read_text())["sboms"]
    assert [(s["name"], s["format"]) for s in described] == [
        ("debian-12-nocloud-amd64-20261125-1200.spdx.json", "spdx"),
        ("debian-12-nocloud-amd64-20261125-1200.cdx.json", "cdx"),
    ]
    assert described[0]["size"] == files.sbom("spdx").stat().st_size


def test_a_missing_status_database_is_one_clear_line(repo_matrix, tmp_path):
    cell = repo_matrix.cell("bookworm-nocloud-amd64")
    files = fake_outputs(tmp_path / "build", cell)
    files.dpkg_status.unlink()
    with pytest.raises(sbom.SbomFailed, match=f"no {files.dpkg_status}: build the cell again"):
        sbom.generate(cell, files)
