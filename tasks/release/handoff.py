"""The hand-off of a cell from the build pipeline to the release project.

The build pipeline's keep job seals each built cell: SHA512SUMS of the files
a release reads (the manifest, the provenance statement and the build records
the release publishes from), signed as SHA512SUMS.asc with the build
project's key (IMAGES_SIGNING_KEY, a protected CI/CD variable: only pipelines
of protected refs see it, and no privileged build job needs it). The image
files and SBOMs are sealed through the manifest, which holds their SHA-512.

The release project checks what it fetched before it releases anything: the
signature with the build key's public half (IMAGES_BUILD_PUBLIC_KEY), every
sealed file against SHA512SUMS, then every file the manifest lists against
the manifest. The first mismatch stops the release with one line.

    python -m tasks.release.handoff seal <cell> [workdir]     (the keep job)
"""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.matrix import MatrixError
from tasks.model.records import Manifest
from tasks.system import atomic, signing
from tasks.system.checksum import format_sums, parse_sums, sha512_file


class HandoffRefused(StageFailed):
    pass


def sealed(files: CellFiles) -> list[Path]:
    """The files SHA512SUMS lists: what a release reads besides the files the manifest lists."""
    wanted = [files.manifest, files.provenance, files.build_info, files.packages, files.dpkg_status, files.changelogs]
    return [path for path in wanted if path.exists()]


def manifest_listed(files: CellFiles, manifest: Manifest) -> list[tuple[Path, str]]:
    """(file, SHA-512) of the image files and SBOMs, as the manifest gives them."""
    return [(files.artifact(a["format"]), a["sha512"]) for a in manifest.artifacts] + [
        (files.sbom(s["format"]), s["sha512"]) for s in manifest.sboms
    ]


def seal(files: CellFiles, signer: signing.Signer | None) -> list[str]:
    """Write SHA512SUMS (and SHA512SUMS.asc with a signer) over the sealed files; their names."""
    if not files.manifest.exists():
        raise HandoffRefused(f"{files.cell.name}: no manifest.json in {files.dir}: the image job did not finish")
    paths = sealed(files)
    sums = format_sums({path.name: sha512_file(path) for path in paths})
    atomic.write_text(files.checksums, sums)
    if signer:
        atomic.write_text(files.checksums_signature, signer.sign_detached(sums.encode()).decode())
    else:
        files.checksums_signature.unlink(missing_ok=True)
    return [path.name for path in paths]


def check(files: CellFiles, keyring: Path) -> int:
    """Refuse (one line) unless everything of the cell is as the build sealed it; the number of files checked."""
    name = files.cell.name
    for needed in (files.checksums, files.checksums_signature):
        if not needed.exists():
            raise HandoffRefused(
                f"{name}: {needed.name} is missing from the build's artifacts: the keep job sealed nothing "
                f"(its pipeline had no {signing.KEY_ENV}?)"
            )
    complaint = signing.verify_detached(keyring, files.checksums_signature, files.checksums)
    if complaint is not None:
        last = complaint.splitlines()[-1] if complaint else "bad signature"
        raise HandoffRefused(f"{name}: {files.checksums.name} is not signed by the build project's key: {last}")
    listed = parse_sums(files.checksums.read_text())
    for file_name, digest in listed.items():
        if len(digest) != 128 or not file_name or "/" in file_name:  # a file of the cell's directory, by name
            raise HandoffRefused(f"{files.checksums}: {file_name!r} is not '<sha512>  <file name>'")
    if files.manifest.name not in listed:
        raise HandoffRefused(f"{name}: {files.checksums.name} does not list {files.manifest.name}")
    checked = 0
    for file_name, digest in listed.items():
        path = files.dir / file_name
        if not path.exists():
            raise HandoffRefused(f"{name}: {file_name} is listed in {files.checksums.name} but was not fetched")
        if sha512_file(path) != digest:
            raise HandoffRefused(f"{name}: {file_name} does not match the build's {files.checksums.name}")
        checked += 1
    manifest = Manifest.read(files.manifest)
    for path, digest in manifest_listed(files, manifest):
        if not path.exists():
            raise HandoffRefused(f"{name}: {path.name} is listed in the manifest but was not fetched")
        if sha512_file(path) != digest:
            raise HandoffRefused(f"{name}: {path.name} does not match the SHA-512 the build's manifest gives")
        checked += 1
    return checked


def main(argv: list[str]) -> int:
    from tasks.model import plan as plan_module

    if len(argv) not in (2, 3) or argv[0] != "seal":
        print("usage: python -m tasks.release.handoff seal <cell> [workdir]", file=sys.stderr)
        return 2
    root = Path(__file__).resolve().parents[2]
    options = {"workdir": argv[2] if len(argv) == 3 else None}
    try:
        plan = plan_module.from_options(root, options.get)
        files = CellFiles.of(plan.workdir, plan.matrix.cell(argv[1]))
        with signing.configured_signer() as signer:
            names = seal(files, signer)
    except (StageFailed, MatrixError) as error:
        print(f"seal: {error}", file=sys.stderr)
        return 1
    print(f"seal {argv[1]}: SHA512SUMS of {', '.join(names)}" + (", signed" if signer else ", NOT signed (no key)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
