"""The release project's job: release what a build pipeline built.

The build pipeline's manual `release:<release>` job triggers the release
project's pipeline (tasks/ci.py) and passes what identifies the build
(TRIGGER_VARIABLES). This job, the only place that holds the platform
credentials, the release storage's and the release signing key:

1. admits the trigger: only from the build project matrix.yaml names
   (ci.build_project), only for a pipeline of a protected ref of it, asked of
   GitLab's API (not taken from the trigger's word);
2. finds the pipeline's image and keep jobs of each cell, fetches their
   artifacts and checks them against the keep job's signed SHA512SUMS and the
   manifest (tasks/release/handoff.py) -- all cells before any is released;
3. releases each cell (`doit --single release:<cell> confirm=yes`: instance
   test, platforms, publication, notification), one failed cell not stopping
   the others, and ends with what happened to each.

    python -m tasks.release.project        (the release project's CI job)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model import plan as plan_module
from tasks.model.layout import CellFiles
from tasks.model.matrix import Cell, UnknownCell
from tasks.model.plan import DEFAULT_WORKDIR, PINNED_IMAGE, Plan
from tasks.model.version import NotAVersion, Version
from tasks.release import handoff
from tasks.release.gitlab import GitLab, extract
from tasks.system import signing

ROOT = Path(__file__).resolve().parents[2]
# What the build pipeline's trigger passes, by name (tasks/ci.py writes them).
PROJECT, PIPELINE, REF, COMMIT, CELLS, VERSION = (
    "BUILD_PROJECT",
    "BUILD_PIPELINE_ID",
    "BUILD_REF",
    "BUILD_COMMIT",
    "RELEASE_CELLS",
    "IMAGES_VERSION",
)
TRIGGER_VARIABLES = (PROJECT, PIPELINE, REF, COMMIT, CELLS, VERSION)
# The builder image the build pipeline ran in, pinned by its digest: the release job's image (tasks/ci.py).
BUILDER = "IMAGES_BUILDER"
PUBLIC_KEY_ENV = "IMAGES_BUILD_PUBLIC_KEY"  # the build project's key, public half: checks the keep jobs' seals
STORAGE_ENV = "IMAGES_RELEASE_STORAGE"
# GitLab's CI_PIPELINE_SOURCE of a pipeline another project's trigger job started.
TRIGGERED_SOURCE = "pipeline"


class ReleaseRefused(StageFailed):
    pass


@dataclass(frozen=True)
class Trigger:
    project: str
    pipeline_id: str
    ref: str
    commit: str
    cells: tuple[str, ...]
    version: str

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Trigger:
        missing = [name for name in TRIGGER_VARIABLES if not env.get(name)]
        if missing:
            raise ReleaseRefused(
                f"the trigger passed no {', '.join(missing)}: the release project is run by a build pipeline's "
                f"release job, not by hand"
            )
        try:
            Version.parse(env[VERSION])
        except NotAVersion as error:
            raise ReleaseRefused(f"refused: the trigger's {VERSION}: {error}") from None
        return cls(
            env[PROJECT],
            env[PIPELINE],
            env[REF],
            env[COMMIT],
            tuple(env[CELLS].replace(",", " ").split()),
            env[VERSION],
        )


def admit(trigger: Trigger, env: Mapping[str, str], plan: Plan, gitlab: GitLab) -> dict:
    """The build pipeline, once it is known to come from the build project and a protected ref."""
    source = env.get("CI_PIPELINE_SOURCE", "")
    if source != TRIGGERED_SOURCE:
        raise ReleaseRefused(
            f"refused: a release runs when a build pipeline triggers it (pipeline source "
            f"{TRIGGERED_SOURCE!r}), not from a {source or 'unknown'!r} pipeline"
        )
    image = env.get("CI_JOB_IMAGE")  # GitLab says which image this job runs in
    if image is not None and (image != env.get(BUILDER) or not PINNED_IMAGE.fullmatch(image)):
        raise ReleaseRefused(
            f"refused: this job runs in {image or 'no named image'}, not in the build's builder image pinned by "
            f"its digest ({BUILDER}: {env.get(BUILDER) or 'not passed'})"
        )
    allowed = plan.matrix.ci.build_project
    if not allowed:
        raise ReleaseRefused(f"refused: {plan.matrix.path.name} names no ci.build_project whose builds may be released")
    if trigger.project != allowed:
        raise ReleaseRefused(f"refused: builds of {trigger.project} are not released here (only {allowed}'s)")
    pipeline = gitlab.pipeline(trigger.project, trigger.pipeline_id)
    if pipeline.get("ref") != trigger.ref or (pipeline.get("sha") and pipeline["sha"] != trigger.commit):
        raise ReleaseRefused(
            f"refused: pipeline {trigger.pipeline_id} built {pipeline.get('ref')} at {pipeline.get('sha')}, "
            f"not {trigger.ref} at {trigger.commit} as the trigger says"
        )
    if not gitlab.ref_is_protected(trigger.project, trigger.ref, bool(pipeline.get("tag"))):
        raise ReleaseRefused(
            f"refused: {trigger.ref} is not a protected ref of {trigger.project}: only pipelines of protected "
            f"branches and tags release"
        )
    return pipeline


def _latest_jobs(jobs: list[dict]) -> dict[str, dict]:
    """Each job name's last attempt (a retried job is listed once per attempt)."""
    latest: dict[str, dict] = {}
    for job in sorted(jobs, key=lambda j: j["id"]):
        latest[job["name"]] = job
    return latest


@dataclass
class Outcome:
    cell: str
    state: str  # fetched, skipped (a known failure not built), not built, released, failed
    detail: str = ""


def fetch(trigger: Trigger, plan: Plan, gitlab: GitLab, keyring: Path) -> list[Outcome]:
    """Fetch and check every cell; refuse everything at the first file that is not as built."""
    jobs = _latest_jobs(gitlab.jobs(trigger.project, trigger.pipeline_id))
    outcomes = []
    for name in trigger.cells:
        try:
            cell = plan.matrix.cell(name)
        except UnknownCell:
            raise ReleaseRefused(f"refused: {name} is no cell of {plan.matrix.path.name}") from None
        image, keep = jobs.get(f"image:{name}"), jobs.get(f"keep:{name}")
        if image is None or keep is None:
            raise ReleaseRefused(f"refused: pipeline {trigger.pipeline_id} has no image:{name} and keep:{name} jobs")
        if image["status"] != "success":
            known = plan.matrix.known_failure(cell)
            state = "skipped" if known else "not built"
            outcomes.append(
                Outcome(name, state, f"image:{name} {image['status']}" + (f" ({known.reason})" if known else ""))
            )
            continue
        files = CellFiles.of(plan.workdir, cell)
        under = f"{DEFAULT_WORKDIR}/{name}"
        with gitlab.artifacts(trigger.project, image) as archive:
            extract(archive, under, files.dir)
        # From the keep job its seal alone (never one the image job's artifacts brought along): the files
        # themselves are the image job's.
        for seal in (files.checksums, files.checksums_signature):
            seal.unlink(missing_ok=True)
        with gitlab.artifacts(trigger.project, keep) as archive:
            extract(archive, under, files.dir, only=(files.checksums.name, files.checksums_signature.name))
        checked = handoff.check(files, keyring)
        outcomes.append(Outcome(name, "fetched", f"{checked} files as built"))
        print(f"{name}: fetched from jobs {image['id']} and {keep['id']}; {checked} files as the build sealed them")
    return outcomes


def release_cell(plan: Plan, cell: Cell, storage: str) -> tuple[bool, str]:
    """doit's release of one fetched cell, as the build pipeline's jobs run theirs."""
    command = [
        sys.executable,
        "-m",
        "doit",
        "-f",
        str(ROOT / "dodo.py"),
        "--single",
        f"release:{cell.name}",
        f"matrix={plan.matrix.path}",
        f"workdir={plan.workdir}",
        f"storage={storage}",
        f"version={plan.version}",
        "confirm=yes",
    ]
    done = subprocess.run(command, cwd=ROOT, check=False)
    record = CellFiles.of(plan.workdir, cell).release_record
    if done.returncode == 0 and record.exists():
        return True, str(record.relative_to(plan.root) if record.is_relative_to(plan.root) else record)
    return False, f"doit release:{cell.name} exited with {done.returncode}"


def run(env: Mapping[str, str] = os.environ, root: Path = ROOT, matrix: Path | None = None) -> list[Outcome]:
    trigger = Trigger.from_environment(env)
    options = {
        "workdir": env.get("IMAGES_WORKDIR") or DEFAULT_WORKDIR,
        "version": trigger.version,
        "matrix": str(matrix) if matrix else None,
    }
    plan = plan_module.from_options(root, options.get)
    storage = env.get(STORAGE_ENV)
    if not storage:
        raise ReleaseRefused(f"set the release project's CI/CD variable {STORAGE_ENV} to where releases go")
    public_key = env.get(PUBLIC_KEY_ENV)
    if not public_key or not Path(public_key).is_file():
        raise ReleaseRefused(
            f"set {PUBLIC_KEY_ENV} (a file variable) to the build project's public key: the build's checksums "
            f"are checked with it"
        )
    gitlab = GitLab.from_environment(env)
    pipeline = admit(trigger, env, plan, gitlab)
    print(f"release of pipeline {trigger.pipeline_id} of {trigger.project} ({pipeline.get('ref')}), {trigger.version}")
    with signing.public_keyring(Path(public_key)) as keyring:
        outcomes = fetch(trigger, plan, gitlab, keyring)
    for outcome in outcomes:
        if outcome.state != "fetched":
            continue
        ok, detail = release_cell(plan, plan.matrix.cell(outcome.cell), storage)
        outcome.state, outcome.detail = ("released" if ok else "failed"), detail
    return outcomes


def main() -> int:
    try:
        outcomes = run()
    except StageFailed as error:
        print(f"release: {error}", file=sys.stderr)
        return 1
    print("release report:")
    width = max(len(o.cell) for o in outcomes) if outcomes else 0
    for outcome in outcomes:
        print(f"  {outcome.cell:<{width}}  {outcome.state:<9}  {outcome.detail}")
    return 0 if all(o.state in ("released", "skipped") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
