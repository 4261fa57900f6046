"""The task graph as a GitLab CI child pipeline, one job per cell.

The project's .gitlab-ci.yml runs `doit ci` in a `generate` job: it knows
the pipeline's source (push, schedule, web, api, ...) and the CELLS variable,
and writes the child pipeline that a trigger job then runs. The child
pipeline mirrors the doit graph:

    base:<release>-<arch>   the shared base             (artifact: the base tarball)
    image:<cell>            build, compress, boottest, manifest of one cell
                            (artifacts: image data, kept ci.expire_images)
    keep:<cell>             logs, manifest, boot results, package list,
                            checksums (artifacts kept for ever)
    upload:<release>        publish the release's cells as dailies (scheduled pipelines)
    release:<release>       manual: the release step of each cell (instance test, platform
                            upload, publication, notification) into $IMAGES_RELEASE_STORAGE

Each job runs `doit --single <task>` on the artifacts of the jobs it needs:
a CI job starts without doit's state, and --single runs the named task
without re-running the tasks whose outputs came as artifacts.
"""

from __future__ import annotations

import fnmatch
import shlex
from pathlib import Path

import yaml

from tasks.errors import StageFailed
from tasks.model.matrix import Cell, CiSettings
from tasks.model.plan import Plan
from tasks.system import atomic


class CiFailed(StageFailed):
    pass


SOURCES = ("push", "schedule", "web", "api", "trigger", "pipeline", "merge_request_event")
IMAGE_STAGES = ("build", "compress", "boottest", "manifest")
WORKDIR = "build"


def selected_cells(plan: Plan, source: str, cells: str | None) -> list[Cell]:
    """The cells a pipeline builds: CELLS when given, else the tier for its source."""
    if cells:
        patterns = cells.replace(",", " ").split()
        chosen = [c for c in plan.matrix.cells if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
        if not chosen:
            raise CiFailed(f"cells={cells!r} matches no cell (cells are named like {plan.matrix.cells[0].name})")
        return chosen
    ci = plan.matrix.ci
    tier = ci.schedule_tier if source == "schedule" else ci.push_tier
    return plan.matrix.tier(tier)


def _quote(arg: str) -> str:
    # Double quotes, so that the job's shell expands $VARIABLES in options.
    return f'"{arg}"' if "$" in arg else shlex.quote(arg)


def _doit(*args: str) -> str:
    return " ".join([".venv/bin/doit", *map(_quote, args), f"workdir={WORKDIR}"])


def _doit_options(plan: Plan) -> list[str]:
    return ["version=$IMAGES_VERSION", f"xz_level={plan.matrix.compress.xz_level}"]


def pipeline(plan: Plan, source: str, cells: str | None = None) -> dict:
    """The child pipeline as a dict, ready for YAML."""
    if source not in SOURCES:
        raise CiFailed(f"source: expected one of: {', '.join(SOURCES)}, got {source!r}")
    ci: CiSettings = plan.matrix.ci
    chosen = selected_cells(plan, source, cells)
    options = _doit_options(plan)
    setup = ["tools/setup-host"]
    prepare = [*setup, ".ci/prepare-job"]

    jobs: dict[str, dict] = {}
    bases = sorted({c.base_name for c in chosen})
    for name in bases:
        arch = name.rsplit("-", 1)[1]
        jobs[f"base:{name}"] = {
            "stage": "base",
            "tags": list(ci.build_tags[arch]),
            "script": [*prepare, _doit("--single", f"base:{name}", *options)],
            "artifacts": {"paths": [f"{WORKDIR}/base/{name}.tar.zst", f"{WORKDIR}/base/{name}.log"],
                          "expire_in": ci.expire_images, "when": "always"},
        }

    for cell in chosen:
        known = plan.matrix.known_failure(cell)
        cell_dir = f"{WORKDIR}/{cell.name}"
        image = {
            "stage": "images",
            "tags": list(ci.build_tags[cell.arch.name]),
            "needs": [{"job": f"base:{cell.base_name}", "artifacts": True}],
            "script": [*prepare, *(_doit("--single", f"{stage}:{cell.name}", *options) for stage in IMAGE_STAGES)],
            "artifacts": {
                "name": f"{cell.name}-images",
                "paths": [f"{cell_dir}/"],
                "exclude": [f"{cell_dir}/disk.raw", f"{cell_dir}/.build/**/*"],
                "expire_in": ci.expire_images,
                "when": "always",
            },
        }
        keep = {
            "stage": "keep",
            "tags": list(ci.tags),
            "needs": [{"job": f"image:{cell.name}", "artifacts": True}],
            # Checksums of the image data, kept when the data itself has expired.
            "script": [f"cd {cell_dir} && (sha512sum image.* > SHA512SUMS || true) && ls -l"],
            "artifacts": {
                "name": f"{cell.name}-records",
                "paths": [f"{cell_dir}/{name}" for name in
                          ("build.log", "boot-*.log", "boottest.json", "build-info.json", "packages.tsv",
                           "manifest.json", "SHA512SUMS", "xfail-*.json")],
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
        needs = [{"job": f"image:{c.name}", "artifacts": True, **({"optional": True} if plan.matrix.known_failure(c)
                                                                   else {})} for c in cells_of]
        publish = [f"if [ -f {WORKDIR}/{c.name}/manifest.json ]; then "
                   f"{_doit('--single', f'publish:{c.name}', *options, 'storage=$STORAGE')}; fi"
                   for c in cells_of]
        if source == "schedule" or cells:
            jobs[f"upload:{release}"] = {
                "stage": "upload",
                "tags": list(ci.tags),
                "needs": needs,
                "variables": {"STORAGE": "${IMAGES_STORAGE}"},
                "script": [*setup, 'if [ -z "$STORAGE" ]; then STORAGE=storage; fi', *publish],
                "artifacts": {"paths": ["storage/"], "expire_in": ci.expire_images, "when": "always"},
            }
        release_cells = [f"if [ -f {WORKDIR}/{c.name}/manifest.json ]; then "
                         f"{_doit('--single', f'release:{c.name}', *options, 'storage=$STORAGE', 'confirm=yes')}; fi"
                         for c in cells_of]
        jobs[f"release:{release}"] = {
            "stage": "release",
            # The instance test boots images: the job needs a build runner.
            "tags": list(ci.build_tags[cells_of[0].arch.name]),
            "needs": needs,
            "when": "manual",
            "allow_failure": True,  # a release not made does not fail the pipeline
            "variables": {"STORAGE": "${IMAGES_RELEASE_STORAGE}"},
            # A release goes where users find it, never into expiring artifacts.
            "script": [*prepare, 'if [ -z "$STORAGE" ]; then echo "release: set the CI/CD variable '
                                 'IMAGES_RELEASE_STORAGE to the storage URL releases go to" >&2; exit 1; fi',
                       *release_cells],
            # What the release did (instance test, platform images, publication) is kept for ever.
            "artifacts": {"paths": [f"{WORKDIR}/*/release.json", f"{WORKDIR}/*/release-progress.json",
                                    f"{WORKDIR}/*/instance-test.json", f"{WORKDIR}/*/instance-test-console.log"],
                          "expire_in": "never", "when": "always"},
        }

    return {
        "stages": ["base", "images", "keep", "upload", "release"],
        "default": {"image": ci.image},
        "variables": {"IMAGES_VERSION": plan.version or "ci-$CI_PIPELINE_ID"},
        **jobs,
    }


def write(plan: Plan, target: Path) -> None:
    """The doit action: validate everything, then write the pipeline."""
    source, cells = plan.source, plan.cells
    document = pipeline(plan, source, cells)
    header = (f"# Generated by `doit ci` from {plan.matrix.path.name} (source: {source}"
              f"{', cells: ' + cells if cells else ''}). Do not edit.\n")
    known = [(c.name, plan.matrix.known_failure(c).reason) for c in plan.matrix.cells if plan.matrix.known_failure(c)]
    if known:
        header += "# Known failures (allow_failure):\n" + "".join(f"#   {n}: {r}\n" for n, r in known)
    atomic.write_text(target, header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120))


class _Dumper(yaml.SafeDumper):
    """No &anchors: jobs that share a list each get their own copy, as a person would write it."""

    def ignore_aliases(self, data) -> bool:
        return True
