"""`doit cleanup [confirm=yes]`: what the platforms and the storage hold beyond the retention settings.

Listed always, deleted only with confirm=yes:

- on each platform of release.platforms: what a release made beyond the newest
  release.keep_releases of its cell, as the platform's `expired` says
  (tasks/release/platforms/);
- storage: the dailies beyond publish.keep_dailies of each release (never the
  one `latest` names), deleted under the storage's lock.

Versions are ordered as tasks/model/version.py says; what carries no version
(an image tagged by hand) is never counted and never deleted. The newest
release of a cell is never touched (keep_releases is at least 1).
A platform that is not configured is not asked; one that cannot be reached
fails the cleanup with one line, before anything is deleted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from tasks.model.plan import Plan
from tasks.release import platforms
from tasks.release.platforms import Expired
from tasks.stages import catalogue, publish
from tasks.system import signing


def _platforms(plan: Plan) -> list[Expired]:
    release = plan.matrix.release
    found = []
    for name, platform in platforms.registered().items():
        if name in release.platforms:  # a platform that is not configured is not asked
            found += platform.expired(release.platforms[name], release.keep_releases, plan.matrix.architectures)
    return found


def _storage(plan: Plan) -> list[Expired]:
    backend = plan.open_storage()
    keep = plan.matrix.publish.keep_dailies
    found = []

    def remove(release: str, version: str) -> None:
        # Under the lock, and only if a publication since the listing has not made it `latest`.
        with signing.configured_signer() as signer, backend.locked(f"cleanup of the {release} dailies"):
            if version in publish.expired_dailies(backend, release, keep):
                publish.delete_daily(backend, release, version)
                catalogue.write(backend, signer)  # the daily leaves the catalogue with its files

    for release in plan.matrix.releases:
        for version in publish.expired_dailies(backend, release, keep):
            where, directory = plan.storage.url, publish.daily_dir(release, version)
            found.append(
                Expired(
                    "storage",
                    where,
                    f"{release} daily",
                    version,
                    directory,
                    (),
                    functools.partial(remove, release, version),
                )
            )
    return found


# Each place that holds releases, in the order they are listed.
SOURCES: tuple[Callable[[Plan], list[Expired]], ...] = (_platforms, _storage)


def expired(plan: Plan) -> list[Expired]:
    return [item for source in SOURCES for item in source(plan)]


def cleanup(plan: Plan) -> list[Expired]:
    """List what is beyond retention; delete it when the plan is confirmed. What was found."""
    found = expired(plan)
    verb = "deleting" if plan.confirmed else "would delete"
    for item in found:
        print(f"{verb}: {item.describe()}")
        if plan.confirmed:
            item.remove()
    if not found:
        print("nothing beyond the retention settings")
    elif not plan.confirmed:
        print(f"{len(found)} beyond the retention settings; `doit cleanup confirm=yes` deletes them")
    else:
        print(f"deleted {len(found)}")
    return found
