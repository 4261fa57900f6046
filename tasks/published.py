"""Reading what is published, as a user would: `doit verify` and `doit changes`.

An image is named <cell>@<version> (bookworm-nocloud-amd64@20261125-1532),
or <cell> alone for the newest daily. It is looked for among the releases
first, then the dailies (tasks/stages/publish.py's layout).
"""

from __future__ import annotations

import json
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.plan import Plan
from tasks.model.records import Manifest
from tasks.model.version import NotAVersion, Version
from tasks.stages import changes, provenance
from tasks.stages.manifest import public_name
from tasks.stages.publish import LATEST, MANIFEST_SUFFIX, PROVENANCE_SUFFIX, SUMS, daily_dir, release_dir
from tasks.storage import Backend
from tasks.system import signing
from tasks.system.checksum import parse_sums


class NotPublished(StageFailed):
    pass


@dataclass(frozen=True)
class Published:
    backend: Backend
    cell_name: str
    version: str
    directory: str
    image_name: str

    def path(self, name: str) -> str:
        return posixpath.join(self.directory, name)

    def read(self, name: str) -> str:
        text = self.backend.read(self.path(name))
        if text is None:
            raise NotPublished(f"{self.path(name)}: not in storage")
        return text

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except ValueError as error:
            raise NotPublished(f"{self.backend.name}: {self.path(name)}: not JSON ({error})") from None

    def manifest(self) -> dict:
        name = public_name(self.image_name, MANIFEST_SUFFIX)
        found = self.read_json(name)
        if not isinstance(found, dict) or not isinstance(found.get("packages"), list) or "name" not in found:
            raise NotPublished(f"{self.backend.name}: {self.path(name)}: not an image manifest")
        return found


def find(plan: Plan, given: str) -> Published:
    """<cell>[@<version>] in the plan's storage."""
    cell_name, _, version = given.partition("@")
    cell = plan.matrix.cell(cell_name)
    if version:
        try:
            Version.parse(version)
        except NotAVersion as error:
            raise NotPublished(f"{given}: {error}") from None
    backend = plan.open_storage()
    release = cell.release.name
    if not version:
        version = (backend.read(f"{release}/daily/{LATEST}") or "").strip()
        if not version:
            raise NotPublished(f"{cell_name}: no daily of {release} in {plan.storage.url}")
    for directory in (release_dir(release, version), daily_dir(release, version)):
        manifest = posixpath.join(directory, public_name(cell.image_name(version), MANIFEST_SUFFIX))
        if backend.stat(manifest) is not None:
            return Published(backend, cell.name, version, directory, cell.image_name(version))
    raise NotPublished(f"{cell_name}@{version}: published neither as a release nor as a daily in {plan.storage.url}")


# --------------------------------------------------------------------------
# doit changes left=... right=...


def image_packages(plan: Plan, given: str) -> tuple[changes.ImagePackages, dict[str, bytes]]:
    """A side of `doit changes`: <cell> in the work directory, <cell>@<version> in storage."""
    if "@" not in given:
        files = CellFiles.of(plan.workdir, plan.matrix.cell(given))
        if not files.manifest.is_file():
            raise NotPublished(f"{given}: no manifest in {files.dir}: doit manifest:{given}, or name a version")
        local = Manifest.read(files.manifest)
        return (
            changes.ImagePackages.of(local.name, local.version, local.packages, files.dpkg_status),
            changes.read_changelogs(files.changelogs),
        )
    published = find(plan, given)
    manifest = published.manifest()
    return changes.ImagePackages.of(manifest["name"], manifest["version"], manifest["packages"]), {}


def compare(plan: Plan, left: str, right: str) -> str:
    old, _ = image_packages(plan, left)
    new, changelogs = image_packages(plan, right)
    return changes.render(changes.compare(old, new, changelogs))


# --------------------------------------------------------------------------
# doit verify image=... key=...


def verify(plan: Plan, given: str, public_key: Path) -> list[str]:
    """Check a published image as a user would: the signature of SHA512SUMS, the
    digest of every file of the image, and the provenance envelope's signature
    and subjects. Returns what was checked; raises on the first failure."""
    published = find(plan, given)
    checked = []
    with tempfile.TemporaryDirectory(prefix="verify-") as scratch, signing.public_keyring(public_key) as keyring:
        sums_file, signature = Path(scratch) / SUMS, Path(scratch) / (SUMS + signing.SIGNATURE_SUFFIX)
        sums_file.write_text(published.read(SUMS))
        try:
            signature.write_text(published.read(SUMS + signing.SIGNATURE_SUFFIX))
        except NotPublished:
            raise signing.SigningError(f"{published.path(SUMS)} is not signed (no {signature.name})") from None
        refused = signing.verify_detached(keyring, signature, sums_file)
        if refused:
            raise signing.SigningError(f"{published.path(SUMS)}: the signature does not verify:\n{refused}")
        checked.append(f"{published.path(SUMS)}: signature good ({public_key})")

        sums = parse_sums(sums_file.read_text())
        mine = {name: digest for name, digest in sums.items() if name.startswith(published.image_name + ".")}
        for name, digest in sorted(mine.items()):
            path = published.path(name)
            if published.backend.stat(path) is None:
                raise signing.SigningError(f"{path}: listed in SHA512SUMS, missing from storage")
            size, actual = published.backend.read_back(path)
            if actual != digest:
                raise signing.SigningError(f"{published.path(name)}: SHA-512 {actual}, SHA512SUMS says {digest}")
            checked.append(f"{name}: {size} bytes, SHA-512 as SHA512SUMS lists")

        envelope_name = public_name(published.image_name, PROVENANCE_SUFFIX)
        if envelope_name not in mine:
            raise signing.SigningError(f"SHA512SUMS does not list {envelope_name}")
        statement = _statement(signing.verify_envelope(published.read_json(envelope_name), keyring), envelope_name)
        for subject in statement["subject"]:
            if mine.get(subject["name"]) != subject["digest"].get("sha512"):
                raise signing.SigningError(
                    f"{envelope_name}: subject {subject['name']} has SHA-512 {subject['digest'].get('sha512')}, "
                    f"SHA512SUMS lists {mine.get(subject['name'])}"
                )
        checked.append(f"{envelope_name}: signature good, {len(statement['subject'])} subjects match SHA512SUMS")
    return checked


def _statement(payload: bytes, source: str) -> dict:
    """The in-toto statement an envelope carries, in the shape verify reads; SigningError otherwise."""
    try:
        statement = json.loads(payload)
    except ValueError:
        raise signing.SigningError(f"{source}: the envelope's payload is not JSON") from None
    if not isinstance(statement, dict) or statement.get("predicateType") != provenance.PREDICATE_TYPE:
        kind = statement.get("predicateType") if isinstance(statement, dict) else type(statement).__name__
        raise signing.SigningError(f"{source}: not an SLSA provenance ({kind})")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("digest"), dict) for s in subjects
    ):
        raise signing.SigningError(f"{source}: its subjects are not a list of names and digests")
    return statement
