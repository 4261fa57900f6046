"""The task graph as a GitLab CI child pipeline, one job per cell.

The project's .gitlab-ci.yml runs `doit ci` in a `generate` job: it knows
the pipeline's source (push, schedule, web, api, ...) and the CELLS variable,
and writes the child pipeline that a trigger job then runs. The child
pipeline mirrors the doit graph:

    base:<release>-<arch>   the shared base             (artifact: the base tarball)
    image:<cell>            build, compress, boottest, manifest of one cell
                            (artifacts: image data, kept ci.expire_images)
    keep:<cell>             seals the cell (SHA512SUMS of what a release reads, signed with
                            the build project's key: tasks/release/handoff.py); keeps logs,
                            manifest, boot results, package list, the seal (for ever)
                            (keep and upload alone see secrets, through their environment: SECRETS)
    upload:<release>        publish the release's cells as dailies (scheduled pipelines)
    release:<release>       manual, and only in pipelines of protected refs: triggers the
                            release project's pipeline (tasks/release/project.py) with what
                            identifies this build; it alone holds platform credentials

Each job runs `doit --single <task>` on the artifacts of the jobs it needs:
a CI job starts without doit's state, and --single runs the named task
without re-running the tasks whose outputs came as artifacts.

`doit release_ci` writes the release project's own pipeline
(RELEASE_PROJECT_PIPELINE, committed; docs/gitlab-ci.md, "Releases: the release project").
"""

from __future__ import annotations

import fnmatch
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks import registry
from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.matrix import Cell, CiSettings
from tasks.model.plan import DEFAULT_WORKDIR, Plan
from tasks.system import atomic


class CiFailed(StageFailed):
    pass


SOURCES = ("push", "schedule", "web", "api", "trigger", "pipeline", "merge_request_event")
# The pipeline's stages, in order; each registry stage names its job (registry.CiJob).
PIPELINE_STAGES = ("base", "images", "keep", "upload", "release")
# The release project's pipeline, in this repository: its CI/CD configuration file.
RELEASE_PROJECT_PIPELINE = Path(".ci/release-project.yml")
# A variable GitLab sets "true" in pipelines of protected branches and tags.
PROTECTED = '$CI_COMMIT_REF_PROTECTED == "true"'

# Where each secret is given, and so which jobs see it. GitLab gives a protected
# variable to every job of a protected ref's pipeline, child pipelines included,
# unless the variable is scoped to an environment: each secret is scoped to one
# (a `*` scope matches several), and only the jobs of that environment name it.
# Those jobs take no deployment (action: prepare) and run on runners registered
# for protected refs only (ci.secret_tags); base: and image: jobs name none.
SEAL = "secrets/seal"  # keep:<cell>
DAILIES = "secrets/dailies"  # upload:<release>
RELEASE = "release"  # the release project's job
JOB_ENVIRONMENTS = {"keep": SEAL, "upload": DAILIES}


@dataclass(frozen=True)
class Secret:
    variables: str  # their names, as a person sets them
    project: str  # build or release
    scope: str  # the environment scope the variables are given (a pattern)
    what: str


SECRETS = (
    Secret(
        "`IMAGES_SIGNING_KEY` (file), `IMAGES_SIGNING_FINGERPRINT`",
        "build",
        "secrets/*",
        "the build key: seals each cell, signs the dailies",
    ),
    Secret(
        "`IMAGES_STORAGE`, and `IMAGES_STORAGE_USER`, `IMAGES_STORAGE_PASSWORD` or `AWS_*` for it",
        "build",
        DAILIES,
        "where dailies go, and its credentials",
    ),
    Secret("`IMAGES_BUILD_API_TOKEN`", "release", RELEASE, "reads the build project's pipeline, jobs and artifacts"),
    Secret("`IMAGES_BUILD_PUBLIC_KEY` (file)", "release", RELEASE, "the build key's public half: checks the seals"),
    Secret("`IMAGES_SIGNING_KEY` (file), `IMAGES_SIGNING_FINGERPRINT`", "release", RELEASE, "the release key"),
    Secret("`IMAGES_RELEASE_STORAGE` and its credentials", "release", RELEASE, "where releases go"),
    Secret("`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`", "release", RELEASE, "EC2, S3 imports, SSM"),
    Secret("`AZURE_STORAGE_SAS`, `AZURE_ACCESS_TOKEN`", "release", RELEASE, "Azure blob and Resource Manager"),
    Secret("`GOOGLE_OAUTH_ACCESS_TOKEN`", "release", RELEASE, "GCE"),
    Secret("`IMAGES_SMTP_USER`, `IMAGES_SMTP_PASSWORD`, `IMAGES_WEBHOOK_URL`", "release", RELEASE, "notification"),
)


def environment(name: str) -> dict:
    """A job's environment that only gives it the variables scoped there: no deployment is recorded."""
    return {"name": name, "action": "prepare"}


# The runners of the jobs that see a project's secrets.
RUNNERS = {
    "build": "`ci.secret_tags`: registered for protected refs only",
    "release": "the release project's own (`ci.build_tags`: it boots the images)",
}


def secrets_table() -> str:
    """docs/gitlab-ci.md's table: each secret, its project and environment, the jobs and runners that see it."""
    kinds = {**{scope: f"`{kind}:`" for kind, scope in JOB_ENVIRONMENTS.items()}, RELEASE: "`release`"}
    lines = [
        "| variable | project | environment scope | jobs that see it | their runners | what |",
        "|---|---|---|---|---|---|",
    ]
    for secret in SECRETS:
        jobs = ", ".join(job for scope, job in kinds.items() if fnmatch.fnmatchcase(scope, secret.scope))
        lines.append(
            f"| {secret.variables} | {secret.project}, protected, masked | `{secret.scope}` | {jobs} | "
            f"{RUNNERS[secret.project]} | {secret.what} |"
        )
    lines.append(
        "| (none) | build | (none) | `base:`, `image:` | `ci.build_tags`, any ref | "
        "the jobs that run the build's code hold no secret |"
    )
    return "\n".join(lines) + "\n"


def selected_cells(plan: Plan, source: str, cells: str | None) -> list[Cell]:
    """The cells a pipeline builds: CELLS when given, else the tier for its source."""
    if cells:
        chosen = plan.matrix.select(*cells.replace(",", " ").split())
        if not chosen:
            raise CiFailed(f"cells={cells!r} matches no cell (cells are named like {plan.matrix.cells[0].name})")
        return chosen
    ci = plan.matrix.ci
    return plan.matrix.tier(ci.schedule_tier if source == "schedule" else ci.push_tier)


def _quote(arg: str) -> str:
    # Double quotes, so that the job's shell expands $VARIABLES in options.
    return f'"{arg}"' if "$" in arg else shlex.quote(arg)


def _doit(*args: str) -> str:
    return " ".join(["doit", *map(_quote, args), f"workdir={DEFAULT_WORKDIR}"])


def builder_image(plan: Plan) -> str:
    """The image every job runs in: builder= as given (the build project's builder job pushed it,
    pinned by its digest), else ci.image tagged with the digest of this checkout's inputs."""
    from tasks.builder import inputs

    if plan.builder:
        return plan.builder
    try:
        return f"{plan.matrix.ci.image}:{inputs.digest(plan.root)}"
    except OSError as error:
        raise CiFailed(f"the builder image's inputs cannot be read: {error} (or give builder=)") from None


def _doit_options(plan: Plan) -> list[str]:
    # A job's work directory is thrown away with it: keeping its steps would cost each build for nothing.
    return ["version=$IMAGES_VERSION", f"xz_level={plan.matrix.compress.xz_level}", "step_cache=no"]


def _run(stage: registry.Stage, name: str, options: list[str], *extra: str) -> str:
    return _doit("--single", f"{stage.name}:{name}", *options, *extra)


def _stages_of(job: registry.CiJob) -> list[registry.Stage]:
    return [stage for stage in registry.stages() if stage.ci_job is job]


def _paths(paths) -> list[str]:
    return [str(path) for path in paths]


def _holding_secrets(plan: Plan, kind: str) -> dict:
    """The runner tags, and in a protected ref's pipeline the environment, of a job that uses secrets.

    Only a protected ref's pipeline gets them: there, the job names the environment its
    secrets are scoped to and runs on the runners for protected refs; elsewhere it gets no
    secret (keep: seals unsigned, upload: publishes without credentials) on the common runners.
    """
    ci = plan.matrix.ci
    if not plan.protected:
        return {"tags": list(ci.tags)}
    return {"tags": list(ci.secret_tags or ci.tags), "environment": environment(JOB_ENVIRONMENTS[kind])}


def _if_built(files: CellFiles, command: str) -> str:
    # A known-failing cell's image job may have stopped early: nothing to publish.
    return f"if [ -f {files.manifest} ]; then {command}; fi"


def pipeline(plan: Plan, source: str, cells: str | None = None) -> dict:
    """The child pipeline as a dict, ready for YAML."""
    if source not in SOURCES:
        raise CiFailed(f"source: expected one of: {', '.join(SOURCES)}, got {source!r}")
    ci: CiSettings = plan.matrix.ci
    chosen = selected_cells(plan, source, cells)
    options = _doit_options(plan)
    # Every job runs in the builder image, which holds every tool: nothing to set up first.
    prepare = [".ci/prepare-job"]
    # Paths as the jobs see them: relative to the checkout, in the default work directory.
    workdir = Path(DEFAULT_WORKDIR)
    storage = plan.matrix.publish.storage

    jobs: dict[str, dict] = {}
    bases = {cell.base_name: cell for cell in chosen}
    for name, cell in sorted(bases.items()):
        base_stages = _stages_of(registry.CiJob.BASE)
        outputs = [path for stage in base_stages for path in stage.outputs(registry.base_context(plan, cell))]
        jobs[f"base:{name}"] = {
            "stage": "base",
            "tags": list(ci.runner_tags(cell.arch.name)),
            "script": [*prepare, *(_run(stage, name, options) for stage in base_stages)],
            "artifacts": {
                "paths": _paths(_relative(outputs, plan.workdir, workdir)),
                "expire_in": ci.expire_images,
                "when": "always",
            },
        }

    for cell in chosen:
        known = plan.matrix.known_failure(cell)
        files = CellFiles.of(workdir, cell)
        image: dict[str, Any] = {
            "stage": "images",
            "tags": list(ci.runner_tags(cell.arch.name)),
            "needs": [{"job": f"base:{cell.base_name}", "artifacts": True}],
            "script": [*prepare, *(_run(stage, cell.name, options) for stage in _stages_of(registry.CiJob.IMAGE))],
            "artifacts": {
                "name": f"{cell.name}-images",
                "paths": [f"{files.dir}/"],
                "exclude": [str(files.raw), f"{files.staging}/**/*"],
                "expire_in": ci.expire_images,
                "when": "always",
            },
        }
        keep: dict[str, Any] = {
            "stage": "keep",
            **_holding_secrets(plan, "keep"),
            "needs": [{"job": f"image:{cell.name}", "artifacts": True}],
            # The seal the release project checks; kept when the image data has expired.
            "script": [f"python3 -m tasks.release.handoff seal {cell.name} {DEFAULT_WORKDIR}"],
            "artifacts": {
                "name": f"{cell.name}-records",
                "paths": _paths([*files.records, *(files.xfail_record(s.name) for s in registry.cell_chain())]),
                "expire_in": "never",
                "when": "always",
            },
            "when": "always",
        }
        if known:
            for job in (image, keep):
                job["allow_failure"] = True
                job["variables"] = {"KNOWN_FAILURE": known.reason}
        jobs[f"image:{cell.name}"] = image
        jobs[f"keep:{cell.name}"] = keep

    releases = sorted({c.release.name for c in chosen}, key=list(plan.matrix.releases).index)
    for release in releases:
        cells_of = [c for c in chosen if c.release.name == release]
        needs = [
            {
                "job": f"image:{c.name}",
                "artifacts": True,
                **({"optional": True} if plan.matrix.known_failure(c) else {}),
            }
            for c in cells_of
        ]
        if source == "schedule" or cells:
            jobs[f"upload:{release}"] = {
                "stage": "upload",
                **_holding_secrets(plan, "upload"),
                "needs": needs,
                "variables": {"STORAGE": "${IMAGES_STORAGE}"},
                "script": [
                    f'if [ -z "$STORAGE" ]; then STORAGE={shlex.quote(storage)}; fi',
                    *(
                        _if_built(CellFiles.of(workdir, c), _run(stage, c.name, options, "storage=$STORAGE"))
                        for c in cells_of
                        for stage in _stages_of(registry.CiJob.UPLOAD)
                    ),
                ],
                "artifacts": {"paths": [f"{storage}/"], "expire_in": ci.expire_images, "when": "always"},
            }
        if plan.protected and ci.release_project:
            jobs[f"release:{release}"] = release_trigger(plan, cells_of)

    return {
        "stages": list(PIPELINE_STAGES),
        "default": {"image": builder_image(plan)},
        "variables": {"IMAGES_VERSION": _version(plan)},
        **jobs,
    }


def _version(plan: Plan) -> str:
    # The project's pipeline gives its own (the date and the pipeline's number); else the generating run's start.
    return plan.version or plan.build_version


# What the generate job's environment says of this pipeline: GitLab's predefined variables, by the
# input they give (tasks/release/project.py). Read when the pipeline is written, so the trigger hands
# literal values: inputs are interpolated downstream, where a $VARIABLE would be the release project's.
BUILD_IDENTITY = {
    "build_project": "CI_PROJECT_PATH",
    "pipeline_id": "CI_PIPELINE_ID",  # the generating pipeline: the release finds its child through the API
    "ref": "CI_COMMIT_REF_NAME",
    "commit": "CI_COMMIT_SHA",
}


def release_trigger(plan: Plan, cells: list[Cell]) -> dict:
    """The manual job that hands a release's cells to the release project: what identifies the build, no secret."""
    from tasks.release import project as release_project  # requests: not needed to load the graph

    ci = plan.matrix.ci
    missing = [name for name in BUILD_IDENTITY.values() if not os.environ.get(name)]
    if missing:
        raise CiFailed(
            f"the release trigger names this pipeline by {', '.join(missing)}, which are not set: "
            f"`doit ci protected=yes` runs in a GitLab CI job"
        )
    if not plan.builder:
        raise CiFailed(
            "the release project runs in the build's builder image pinned by digest: give builder=<image>@sha256:<hex>"
        )
    given = {
        **{name: os.environ[variable] for name, variable in BUILD_IDENTITY.items()},
        "cells": " ".join(c.name for c in cells),
        "version": _version(plan),
        "builder": builder_image(plan),  # the release job runs in the same image
    }
    trigger: dict[str, Any] = {"project": ci.release_project, "branch": ci.release_branch, "strategy": "depend"}
    job: dict[str, Any] = {
        "stage": "release",
        "needs": [
            {
                "job": f"keep:{c.name}",
                "artifacts": False,
                **({"optional": True} if plan.matrix.known_failure(c) else {}),
            }
            for c in cells
        ],
        # Only a pipeline of a protected ref carries it (doit ci leaves it out of the others, and GitLab
        # would too); manual, and a release not made does not fail the pipeline.
        "rules": [{"if": PROTECTED, "when": "manual", "allow_failure": True}],
        # Nothing of this pipeline's own variables goes along: only what the release project reads.
        "inherit": {"variables": False},
        "trigger": trigger,
    }
    if ci.trigger_inputs:
        trigger["inputs"] = given
    else:  # GitLab before 17.11: pipeline variables, which the release project must allow
        job["variables"] = {i.variable: given[i.name] for i in release_project.INPUTS}
    return job


def release_project_pipeline(plan: Plan) -> list[dict]:
    """The release project's pipeline, one job that admits the trigger, fetches, checks and releases: its
    `spec:inputs` header (ci.trigger_inputs) and its configuration, the YAML documents of the file."""
    from tasks.release import project as release_project  # requests: not needed to load the graph

    ci = plan.matrix.ci
    # Every cell's release records, by their names (the same in every cell's directory).
    any_cell = CellFiles.of(Path(DEFAULT_WORKDIR), plan.matrix.cells[0])
    records = sorted(f"{DEFAULT_WORKDIR}/*/{path.name}" for path in any_cell.release_records)
    inputs = release_project.INPUTS
    if ci.trigger_inputs:
        # Interpolated when GitLab creates the pipeline: literal text in the job, which no variable
        # can change; each checked against its pattern (and again by the job). The empty default lets
        # GitLab create the pipelines the workflow then drops; the job refuses an empty one.
        header: list[dict] = [
            {
                "spec": {
                    "inputs": {
                        i.name: {"description": i.description, "default": "", "regex": f"^({i.pattern})?$"}
                        for i in inputs
                    }
                }
            }
        ]
        # The image through a variable: an empty input (a pipeline the workflow drops) is no invalid
        # configuration; a variable that overrides it makes the job refuse (CI_JOB_IMAGE is not the input).
        variables = {"variables": {release_project.BUILDER: "$[[ inputs.builder ]]"}}
        command = "python3 -m tasks.release.project " + " ".join(f"{i.option} '$[[ inputs.{i.name} ]]'" for i in inputs)
    else:
        header, variables, command = [], {}, "python3 -m tasks.release.project"
    return [
        *header,
        {
            "stages": ["release"],
            # A build pipeline's trigger starts it; nothing else (tasks/release/project.py refuses the rest too).
            "workflow": {"rules": [{"if": f'$CI_PIPELINE_SOURCE == "{release_project.TRIGGERED_SOURCE}"'}]},
            # The build pipeline's own, pinned by digest, as its trigger names it (the job checks it is so).
            **variables,
            "default": {"image": f"${release_project.BUILDER}"},
            "release": {
                "stage": "release",
                # Only this job sees the release project's secrets (scoped to the environment).
                "environment": environment(RELEASE),
                # The instance test boots the images: a build runner (qemu, without privileges).
                "tags": list(ci.runner_tags(next(iter(plan.matrix.architectures)))),
                "script": [".ci/prepare-job", command],
                # What the release did (instance tests, platform images, publication), kept for ever.
                "artifacts": {"paths": records, "expire_in": "never", "when": "always"},
            },
        },
    ]


def write_release_project(plan: Plan, target: Path) -> None:
    header = (
        '# The release project\'s pipeline (docs/gitlab-ci.md, "Releases: the release project"): set it as\n'
        f"# the release project's CI/CD configuration file. Generated by `doit release_ci` from "
        f"{plan.matrix.path.name}. Do not edit.\n"
    )
    documents = release_project_pipeline(plan)
    atomic.write_text(
        target,
        header + yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=1000),  # the command on one line
    )


def _relative(paths, workdir: Path, to: Path) -> list[Path]:
    """paths under this run's work directory, as they are under the CI job's."""
    return [to / path.relative_to(workdir) for path in paths]


def write(plan: Plan, target: Path) -> None:
    """The doit action: validate everything, then write the pipeline."""
    source, cells = plan.source, plan.cells
    document = pipeline(plan, source, cells)
    header = (
        f"# Generated by `doit ci` from {plan.matrix.path.name} (source: {source}"
        f"{', cells: ' + cells if cells else ''}). Do not edit.\n"
    )
    if plan.protected:
        ci = plan.matrix.ci
        header += (
            '# Secrets (docs/gitlab-ci.md, "Which job sees which secret"): '
            + ", ".join(f"{kind}: jobs see environment {scope}" for kind, scope in JOB_ENVIRONMENTS.items())
            + f", on runners tagged {', '.join(ci.secret_tags or ci.tags)}; base: and image: jobs see none.\n"
        )
    known = [(c.name, k.reason) for c in plan.matrix.cells if (k := plan.matrix.known_failure(c))]
    if known:
        header += "# Known failures (allow_failure):\n" + "".join(f"#   {n}: {r}\n" for n, r in known)
    atomic.write_text(target, header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120))


class _Dumper(yaml.SafeDumper):
    """No &anchors: jobs that share a list each get their own copy, as a person would write it."""

    def ignore_aliases(self, data) -> bool:
        return True


if __name__ == "__main__":
    print(secrets_table(), end="")
