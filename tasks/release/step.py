"""The release step (manual only): `doit release:<cell> confirm=yes`.

In order, stopping at the first failure:

1. the instance test, for the vendors of release.instance_test —
   tasks/release/instancetest.py;
2. the upload to the cell's platform, when release.platforms has an entry
   for its vendor — tasks/release/platforms/;
3. publication in storage under <release>/<version>/ with its SHA512SUMS,
   signed (a release without a signing key is refused before anything
   runs), then <release>/latest — only after the instance test passed;
4. a notification (mail, webhook) — tasks/release/notify.py.

Everything done is recorded in release.json, the task's target. Until then,
release-progress.json (tasks/release/journal.py) keeps the steps done, so
that a release run again after a failure (the mail server was down, a region
refused a copy) does not test the instance or register an image a second time.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

from tasks import storage
from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.matrix import BootTestSettings, Cell, PublishSettings, ReleaseSettings
from tasks.model.records import Manifest, ReleaseRecord
from tasks.release import instancetest, notify
from tasks.release.journal import Journal
from tasks.stages import catalogue
from tasks.stages import publish as publication
from tasks.storage.backend import RetryPolicy
from tasks.system import atomic, signing
from tasks.system.checksum import sha512_file


class ReleaseRefused(StageFailed):
    pass


def release(
    cell: Cell,
    files: CellFiles,
    confirmed: bool,
    location: storage.Location,
    publish: PublishSettings,
    settings: ReleaseSettings,
    boot: BootTestSettings,
    kvm_verdicts: Path | None = None,
) -> dict:
    if not confirmed:
        raise ReleaseRefused(f"a release is made on purpose only: doit release:{cell.name} confirm=yes")
    key = signing.KeyConfig.from_environment()
    if key is None:
        raise ReleaseRefused(
            f"a release is signed: set {signing.KEY_ENV} (the secret key's file) and "
            f"{signing.FINGERPRINT_ENV} (its fingerprint) for the release of {cell.name}"
        )
    manifest = Manifest.read(files.manifest)
    version = publication.version_of(manifest, files.manifest)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    progress = Journal(files.release_progress, sha512_file(files.manifest))

    tested = None
    if cell.vendor.name in settings.instance_test:
        tested = progress.done("instance_test", {"timeout": settings.instance_test_timeout})
        if tested:
            print(f"instance test of {cell.name}: passed before for this image")
        else:
            result = instancetest.instance_test(cell, files, boot, settings.instance_test_timeout, kvm_verdicts)
            print(f"instance test of {cell.name} passed:\n{instancetest.describe(result)}")
            tested = result.to_json()
            progress.record("instance_test", {"timeout": settings.instance_test_timeout}, tested)

    platforms: list[dict] = []
    if cell.vendor.name in settings.platforms:
        platform_settings = settings.platforms[cell.vendor.name]
        platform_config = dataclasses.asdict(platform_settings)
        made = progress.done("platform", platform_config)
        parts = progress.part("platform", platform_config)
        # Imported here: every doit run loads this module; the clouds' clients only a release needs.
        from tasks.release import platforms as platform_modules

        if made:
            print(f"{cell.vendor.name}: uploaded before for this image: {made}")
        else:
            made = platform_modules.registered()[cell.vendor.name].upload(
                cell, files, manifest, platform_settings, parts
            )
            print(f"{cell.vendor.name}: {made}")
            progress.record("platform", platform_config, made)
        platforms.append(made)

    # Uploads that are already in place are skipped by publish_directory itself.
    backend = location.open(RetryPolicy(publish.retries, publish.retry_delay))
    directory = publication.release_dir(cell.release.name, manifest.version)
    with signing.signer(key) as signer, backend.locked(f"releasing {cell.name} {version}"):
        publication.prepare(cell, files, manifest, backend, cell.release.name, signer)
        files_published = publication.publish_directory(
            backend, directory, publication.cell_uploads(files, manifest), signer
        )
        publication.point_latest(backend, cell.release.name, version)
        catalogue.write(backend, signer, changed=(directory,))

    message = {
        "release": cell.release.name,
        "version": manifest.version,
        "url": location.link(directory),
        "cells": [{"cell": cell.name, "files": files_published, "platforms": platforms}],
    }
    record = ReleaseRecord(
        cell=cell.name,
        name=manifest.name,
        version=manifest.version,
        started=started,
        instance_test=tested,
        platforms=platforms,
        published={
            "storage": location.url,
            "directory": directory,
            "files": files_published,
            "signed_by": key.fingerprint,
        },
        notified=notify.notify(message, settings.notify),
    )
    atomic.write_json(files.release_record, record.to_json())
    progress.finished()
    return record.to_json()
