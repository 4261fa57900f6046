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

from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.plan import Plan
from tasks.stages import changes, provenance
from tasks.stages.manifest import public_name
from tasks.stages.publish import LATEST, PROVENANCE_SUFFIX, SUMS, daily_dir, release_dir
from tasks.storage import Backend, RetryPolicy
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
        text = self.backend.read_text(self.path(name))
        if text is None:
            raise NotPublished(f"{self.path(name)}: not in storage")
        return text

    def manifest(self) -> dict:
        return json.loads(self.read(public_name(self.image_name, "json")))


def find(plan: Plan, given: str) -> Published:
    """<cell>[@<version>] in the plan's storage."""
    cell_name, _, version = given.partition("@")
    cell = plan.matrix.cell(cell_name)
    backend = plan.storage.open(RetryPolicy(plan.matrix.publish.retries, plan.matrix.publish.retry_delay))
    release = cell.release.name
    if not version:
        version = (backend.read_text(f"{release}/daily/{LATEST}") or "").strip()
        if not version:
            raise NotPublished(f"{cell_name}: no daily of {release} in {plan.storage.url}")
    for directory in (release_dir(release, version), daily_dir(release, version)):
        manifest = posixpath.join(directory, public_name(cell.image_name(version), "json"))
        if backend.size(manifest) is not None:
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
        local = json.loads(files.manifest.read_text())
        return (
            changes.ImagePackages.of(local["name"], local["version"], local["packages"], files.dpkg_status),
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
            size, actual = published.backend.digest(published.path(name))
            if actual != digest:
                raise signing.SigningError(f"{published.path(name)}: SHA-512 {actual}, SHA512SUMS says {digest}")
            checked.append(f"{name}: {size} bytes, SHA-512 as SHA512SUMS lists")

        envelope_name = public_name(published.image_name, PROVENANCE_SUFFIX)
        if envelope_name not in mine:
            raise signing.SigningError(f"SHA512SUMS does not list {envelope_name}")
        statement = json.loads(signing.verify_envelope(json.loads(published.read(envelope_name)), keyring))
        if statement.get("predicateType") != provenance.PREDICATE_TYPE:
            raise signing.SigningError(f"{envelope_name}: not an SLSA provenance ({statement.get('predicateType')})")
        for subject in statement["subject"]:
            if mine.get(subject["name"]) != subject["digest"].get("sha512"):
                raise signing.SigningError(
                    f"{envelope_name}: subject {subject['name']} has SHA-512 {subject['digest'].get('sha512')}, "
                    f"SHA512SUMS lists {mine.get(subject['name'])}"
                )
        checked.append(f"{envelope_name}: signature good, {len(statement['subject'])} subjects match SHA512SUMS")
    return checked
