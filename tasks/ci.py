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

import shlex
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
            "tags": list(ci.tags),
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
                "tags": list(ci.tags),
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


def release_trigger(plan: Plan, cells: list[Cell]) -> dict:
    """The manual job that hands a release's cells to the release project: what identifies the build, no secret."""
    from tasks.release import project as release_project  # requests: not needed to load the graph

    ci = plan.matrix.ci
    variables = {
        release_project.PROJECT: "$CI_PROJECT_PATH",
        release_project.PIPELINE: "$CI_PIPELINE_ID",  # this (child) pipeline: its jobs hold the artifacts
        release_project.REF: "$CI_COMMIT_REF_NAME",
        release_project.COMMIT: "$CI_COMMIT_SHA",
        release_project.CELLS: " ".join(c.name for c in cells),
        release_project.VERSION: _version(plan),
        release_project.BUILDER: builder_image(plan),  # the release job runs in the same image
    }
    return {
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
        "variables": variables,
        "trigger": {"project": ci.release_project, "branch": ci.release_branch, "strategy": "depend"},
    }


def release_project_pipeline(plan: Plan) -> dict:
    """The release project's pipeline: one job that admits the trigger, fetches, checks and releases."""
    from tasks.release import project as release_project  # requests: not needed to load the graph

    ci = plan.matrix.ci
    # Every cell's release records, by their names (the same in every cell's directory).
    any_cell = CellFiles.of(Path(DEFAULT_WORKDIR), plan.matrix.cells[0])
    records = sorted(f"{DEFAULT_WORKDIR}/*/{path.name}" for path in any_cell.release_records)
    return {
        "stages": ["release"],
        # A build pipeline's trigger starts it; nothing else (tasks/release/project.py refuses the rest too).
        "workflow": {"rules": [{"if": f'$CI_PIPELINE_SOURCE == "{release_project.TRIGGERED_SOURCE}"'}]},
        # The build pipeline's own, pinned by digest, as its trigger names it (the job checks it is so).
        "default": {"image": f"${release_project.BUILDER}"},
        "release": {
            "stage": "release",
            # The instance test boots the images: a build runner (qemu, without privileges).
            "tags": list(ci.runner_tags(next(iter(plan.matrix.architectures)))),
            "script": [".ci/prepare-job", "python3 -m tasks.release.project"],
            # What the release did (instance tests, platform images, publication), kept for ever.
            "artifacts": {"paths": records, "expire_in": "never", "when": "always"},
        },
    }


def write_release_project(plan: Plan, target: Path) -> None:
    header = (
        '# The release project\'s pipeline (docs/gitlab-ci.md, "Releases: the release project"): set it as\n'
        f"# the release project's CI/CD configuration file. Generated by `doit release_ci` from "
        f"{plan.matrix.path.name}. Do not edit.\n"
    )
    atomic.write_text(target, header + yaml.dump(release_project_pipeline(plan), Dumper=_Dumper, sort_keys=False))


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
    known = [(c.name, k.reason) for c in plan.matrix.cells if (k := plan.matrix.known_failure(c))]
    if known:
        header += "# Known failures (allow_failure):\n" + "".join(f"#   {n}: {r}\n" for n, r in known)
    atomic.write_text(target, header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120))


class _Dumper(yaml.SafeDumper):
    """No &anchors: jobs that share a list each get their own copy, as a person would write it."""

    def ignore_aliases(self, data) -> bool:
        return True
