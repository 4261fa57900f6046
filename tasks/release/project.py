"""The release project's job: release what a build pipeline built.

The build pipeline's manual `release:<release>` job triggers the release
project's pipeline (tasks/ci.py) and hands it what identifies the build
(INPUTS): as `trigger:inputs`, which the release project's `spec:inputs`
interpolate into this job's command line when the pipeline is created, so no
variable can change them; or, for GitLab before 17.11 (ci.trigger_inputs:
false), as pipeline variables. This job, the only place that holds the
platform credentials, the release storage's and the release signing key:

1. admits the trigger: only from the build project matrix.yaml names
   (ci.build_project), only for a pipeline of a protected ref of it, asked of
   the API of the GitLab matrix.yaml names (ci.gitlab_url: never the one a
   variable such as CI_API_V4_URL names, which a trigger could set), not
   taken from the trigger's word;
2. finds the pipeline's image and keep jobs of each cell, fetches their
   artifacts and checks them against the keep job's signed SHA512SUMS and the
   manifest (tasks/release/handoff.py) -- all cells before any is released;
3. releases each cell (`doit --single release:<cell> confirm=yes`: instance
   test, platforms, publication, notification), one failed cell not stopping
   the others, and ends with what happened to each.

    python -m tasks.release.project [--build-project P --pipeline-id N ...]   (the release project's job)
"""

from __future__ import annotations

import argparse
import os
import re
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


@dataclass(frozen=True)
class Input:
    """What identifies the build: a `spec:inputs` entry of the release project and this job's option."""

    name: str  # the input, and the option --<name with dashes>
    variable: str  # the pipeline variable that carries it instead (ci.trigger_inputs: false)
    pattern: str  # what GitLab (spec:inputs regex) and this job accept: nothing a shell would read
    description: str

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


INPUTS = (
    Input("build_project", "BUILD_PROJECT", r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+", "the build project's path"),
    Input(
        "pipeline_id",
        "BUILD_PIPELINE_ID",
        r"[0-9]+",
        "the build project's pipeline, whose generated child pipeline built the images",
    ),
    Input("ref", "BUILD_REF", r"[A-Za-z0-9_.][A-Za-z0-9_./-]*", "the branch or tag it built"),
    Input("commit", "BUILD_COMMIT", r"[0-9a-f]{40}([0-9a-f]{24})?", "the commit it built"),
    Input("cells", "RELEASE_CELLS", r"[a-z0-9][a-z0-9 -]*", "the cells to release, separated by spaces"),
    Input("version", "IMAGES_VERSION", r"[0-9]{8}-[0-9]+", "the images' version"),
    Input(
        "builder",
        "IMAGES_BUILDER",
        r"[A-Za-z0-9][A-Za-z0-9._/:-]*@sha256:[0-9a-f]{64}",
        "the builder image the build ran in, pinned by digest",
    ),
)
BY_NAME = {i.name: i for i in INPUTS}
# The fallback's pipeline variables, by name (tasks/ci.py writes them; tests set them).
PROJECT, PIPELINE, REF, COMMIT, CELLS, VERSION, BUILDER = (i.variable for i in INPUTS)
TRIGGER_VARIABLES = (PROJECT, PIPELINE, REF, COMMIT, CELLS, VERSION)
PUBLIC_KEY_ENV = "IMAGES_BUILD_PUBLIC_KEY"  # the build project's key, public half: checks the keep jobs' seals
STORAGE_ENV = "IMAGES_RELEASE_STORAGE"
# GitLab's CI_PIPELINE_SOURCE of a pipeline another project's trigger job started.
TRIGGERED_SOURCE = "pipeline"
API_URL_ENV = "CI_API_V4_URL"


class ReleaseRefused(StageFailed):
    pass


@dataclass(frozen=True)
class Trigger:
    project: str
    pipeline_id: str  # the build project's pipeline (the parent of the one whose jobs hold the artifacts)
    ref: str
    commit: str
    cells: tuple[str, ...]
    version: str
    builder: str  # "" in the fallback when the trigger passed none

    @classmethod
    def from_inputs(cls, given: Mapping[str, str], source: str) -> Trigger:
        """The trigger from its values by input name; source: what gave them, for the errors."""

        def called(i: Input) -> str:  # as the trigger named it
            return i.name if source == "inputs" else i.variable

        missing = [i for i in INPUTS if not given.get(i.name) and i.name != "builder"]
        if missing:
            names = ", ".join(called(i) for i in missing)
            raise ReleaseRefused(
                f"the trigger passed no {names}: the release project is run by a build pipeline's "
                f"release job, not by hand"
            )
        for i in INPUTS:
            value = given.get(i.name) or ""
            if value and not re.fullmatch(i.pattern, value):
                raise ReleaseRefused(f"refused: the trigger's {called(i)} is not {i.description}: {value!r}")
        try:
            Version.parse(given["version"])
        except NotAVersion as error:
            raise ReleaseRefused(f"refused: the trigger's {called(BY_NAME['version'])}: {error}") from None
        return cls(
            given["build_project"],
            given["pipeline_id"],
            given["ref"],
            given["commit"],
            tuple(given["cells"].split()),
            given["version"],
            given.get("builder") or "",
        )

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Trigger:
        """The fallback: pipeline variables (ci.trigger_inputs: false)."""
        return cls.from_inputs({i.name: env.get(i.variable, "") for i in INPUTS}, "variables")


def arguments(argv: list[str]) -> dict[str, str] | None:
    """The inputs given on the command line (the job's script, interpolated by GitLab); None: none given."""
    parser = argparse.ArgumentParser(prog="python -m tasks.release.project")
    for i in INPUTS:
        parser.add_argument(i.option, dest=i.name, default=None, help=i.description)
    parsed = vars(parser.parse_args(argv))
    return None if all(value is None for value in parsed.values()) else {k: v or "" for k, v in parsed.items()}


def admit(trigger: Trigger, env: Mapping[str, str], plan: Plan, gitlab: GitLab) -> dict:
    """The build pipeline, once it is known to come from the build project and a protected ref."""
    source = env.get("CI_PIPELINE_SOURCE", "")
    if source != TRIGGERED_SOURCE:
        raise ReleaseRefused(
            f"refused: a release runs when a build pipeline triggers it (pipeline source "
            f"{TRIGGERED_SOURCE!r}), not from a {source or 'unknown'!r} pipeline"
        )
    image = env.get("CI_JOB_IMAGE")  # GitLab says which image this job runs in
    if image is not None and (image != trigger.builder or not PINNED_IMAGE.fullmatch(image)):
        raise ReleaseRefused(
            f"refused: this job runs in {image or 'no named image'}, not in the build's builder image pinned by "
            f"its digest (builder: {trigger.builder or 'not passed'})"
        )
    allowed = plan.matrix.ci.build_project
    if not allowed:
        raise ReleaseRefused(f"refused: {plan.matrix.path.name} names no ci.build_project whose builds may be released")
    if trigger.project != allowed:
        raise ReleaseRefused(f"refused: builds of {trigger.project} are not released here (only {allowed}'s)")
    pipeline = gitlab.pipeline(trigger.project, trigger.pipeline_id)
    if pipeline.get("source") == "parent_pipeline":
        raise ReleaseRefused(f"refused: pipeline {trigger.pipeline_id} is a child pipeline: name the build's own")
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


@dataclass
class Outcome:
    cell: str
    state: str  # fetched, skipped (a known failure not built), not built, released, failed
    detail: str = ""


def fetch(trigger: Trigger, plan: Plan, gitlab: GitLab, keyring: Path) -> list[Outcome]:
    """Fetch and check every cell; refuse everything at the first file that is not as built."""
    images = gitlab.child_pipeline(trigger.project, trigger.pipeline_id)
    # GitLab lists a retried job's last attempt only (include_retried: false).
    jobs = {job["name"]: job for job in gitlab.jobs(trigger.project, images)}
    outcomes = []
    for name in trigger.cells:
        try:
            cell = plan.matrix.cell(name)
        except UnknownCell:
            raise ReleaseRefused(f"refused: {name} is no cell of {plan.matrix.path.name}") from None
        image, keep = jobs.get(f"image:{name}"), jobs.get(f"keep:{name}")
        if image is None or keep is None:
            raise ReleaseRefused(f"refused: pipeline {images} has no image:{name} and keep:{name} jobs")
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


def api_url(plan: Plan, env: Mapping[str, str]) -> str:
    """The API of the GitLab matrix.yaml names; a CI_API_V4_URL that says otherwise was overridden."""
    gitlab_url = plan.matrix.ci.gitlab_url
    if not gitlab_url:
        raise ReleaseRefused(f"refused: {plan.matrix.path.name} names no ci.gitlab_url whose API the release asks")
    url = gitlab_url.rstrip("/") + "/api/v4"
    given = env.get(API_URL_ENV)
    if given and given.rstrip("/") != url:
        raise ReleaseRefused(
            f"refused: {API_URL_ENV} is {given}, not {url} (ci.gitlab_url): a pipeline variable may have set it; "
            f"restrict pipeline variables in the release project"
        )
    return url


def run(
    env: Mapping[str, str] = os.environ,
    root: Path = ROOT,
    matrix: Path | None = None,
    inputs: Mapping[str, str] | None = None,
) -> list[Outcome]:
    """The release; inputs: the trigger's, from the command line (None: the fallback's pipeline variables)."""
    trigger = Trigger.from_inputs(inputs, "inputs") if inputs is not None else Trigger.from_environment(env)
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
    gitlab = GitLab.from_environment(api_url(plan, env), env)
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


def main(argv: list[str] = sys.argv[1:]) -> int:
    try:
        outcomes = run(inputs=arguments(argv))
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
