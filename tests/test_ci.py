"""The generated GitLab CI pipeline: its jobs, rules, artifacts and validity."""

import copy
import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks import ci
from tasks.model import plan
from tasks.model.matrix import MatrixError

REPO = Path(__file__).resolve().parent.parent
# The unit tests' own matrix (tests/data/matrix.yaml), not the project's.
FIXTURE_MATRIX = REPO / "tests" / "data" / "matrix.yaml"
GOOD = yaml.safe_load((FIXTURE_MATRIX).read_text())


# What GitLab sets in the generate job, which the release trigger names literally.
BUILD_IDENTITY = {"CI_PROJECT_PATH": "cloud-team/images", "CI_PIPELINE_ID": "4710", "CI_COMMIT_REF_NAME": "main"}
BUILD_IDENTITY["CI_COMMIT_SHA"] = "c" * 40


@pytest.fixture(autouse=True)
def in_a_gitlab_job(monkeypatch):
    for name, value in BUILD_IDENTITY.items():
        monkeypatch.setenv(name, value)


def make_plan(tmp_path, data=None, **options):
    matrix_file = tmp_path / "matrix.yaml"
    matrix_file.write_text(yaml.safe_dump(data or GOOD, sort_keys=False))
    options = {"matrix": str(matrix_file), "workdir": str(tmp_path / "build"), **options}
    return plan.from_options(REPO, options.get, options)


def jobs(document, prefix=""):
    return sorted(
        name for name, job in document.items() if isinstance(job, dict) and "stage" in job and name.startswith(prefix)
    )


def test_push_builds_the_push_tier(tmp_path):
    doc = ci.pipeline(make_plan(tmp_path), "push")
    assert jobs(doc) == [
        "base:bookworm-amd64",
        "image:bookworm-genericcloud-amd64",
        "image:bookworm-nocloud-amd64",
        "keep:bookworm-genericcloud-amd64",
        "keep:bookworm-nocloud-amd64",
    ], "a pipeline of an unprotected ref (any branch) has no release job"


def test_only_pipelines_of_protected_refs_can_release(tmp_path):
    for protected, expected in (("true", ["release:bookworm"]), ("false", []), ("", [])):
        doc = ci.pipeline(make_plan(tmp_path, protected=protected, builder=PINNED), "push")
        assert jobs(doc, "release:") == expected


def test_schedule_builds_everything_and_uploads(tmp_path, test_matrix):
    doc = ci.pipeline(make_plan(tmp_path, protected="true", builder=PINNED), "schedule")
    assert jobs(doc, "image:") == sorted(f"image:{c.name}" for c in test_matrix.cells)
    assert len(jobs(doc, "base:")) == 6
    assert jobs(doc, "upload:") == ["upload:bookworm", "upload:sid", "upload:trixie"]
    assert jobs(doc, "release:") == ["release:bookworm", "release:sid", "release:trixie"]
    assert len(doc["upload:trixie"]["needs"]) == 12


def test_cells_chosen_by_hand(tmp_path):
    doc = ci.pipeline(make_plan(tmp_path), "web", "trixie-*-arm64, sid-ec2-amd64")
    assert jobs(doc, "image:") == sorted([f"image:trixie-{v}-arm64" for v in GOOD["vendors"]] + ["image:sid-ec2-amd64"])
    assert jobs(doc, "base:") == ["base:sid-amd64", "base:trixie-arm64"]
    assert set(jobs(doc, "upload:")) == {"upload:trixie", "upload:sid"}


def test_image_job_runs_the_cells_doit_targets(tmp_path):
    doc = ci.pipeline(make_plan(tmp_path), "push")
    job = doc["image:bookworm-nocloud-amd64"]
    assert job["needs"] == [{"job": "base:bookworm-amd64", "artifacts": True}]
    script = "\n".join(job["script"])
    for stage in ("build", "compress", "boottest", "manifest"):
        assert f'doit --single {stage}:bookworm-nocloud-amd64 "version=$IMAGES_VERSION"' in script
    # The job's work directory goes with it: its builds keep no step for a next build.
    assert all("step_cache=no" in line for line in job["script"] if line.startswith("doit --single build:"))
    assert job["tags"] == ["image-builder"]
    assert ".ci/prepare-job" in job["script"]


PINNED = "registry.example.org/cloud-team/images/builder@sha256:" + "ab" * 32


@pytest.mark.parametrize("source", ["push", "schedule"])
def test_every_job_runs_in_the_builder_image_pinned_by_digest_and_sets_up_nothing(tmp_path, source):
    doc = ci.pipeline(make_plan(tmp_path, protected="true", builder=PINNED), source)
    assert doc["default"] == {"image": PINNED}
    names = jobs(doc)
    assert names and not [name for name in names if "image" in doc[name]], "no job names an image of its own"
    scripts = "\n".join(line for name in names for line in doc[name].get("script", []))
    assert "setup-host" not in scripts and ".venv" not in scripts and "apt-get" not in scripts
    assert doc["release:bookworm"]["trigger"]["inputs"]["builder"] == PINNED


def test_without_a_pinned_builder_the_jobs_name_it_by_the_digest_of_its_inputs(tmp_path):
    from tasks.builder import inputs

    image = ci.pipeline(make_plan(tmp_path), "push")["default"]["image"]
    assert image == f"{GOOD['ci']['image']}:{inputs.digest()}"


@pytest.mark.parametrize("given", ["debian:trixie", "builder@sha256:abc", "a b@sha256:" + "0" * 64])
def test_a_builder_not_pinned_by_digest_is_refused(tmp_path, given):
    with pytest.raises(MatrixError, match="builder: expected an image pinned by digest"):
        make_plan(tmp_path, builder=given)


def test_artifacts_follow_the_storage_policy(tmp_path):
    data = copy.deepcopy(GOOD)
    data["ci"]["expire_images"] = "3 days"
    doc = ci.pipeline(make_plan(tmp_path, data), "push")
    image, keep = doc["image:bookworm-nocloud-amd64"], doc["keep:bookworm-nocloud-amd64"]
    assert image["artifacts"]["expire_in"] == "3 days"
    assert "build/bookworm-nocloud-amd64/disk.raw" in image["artifacts"]["exclude"]
    assert keep["artifacts"]["expire_in"] == "never"
    kept = keep["artifacts"]["paths"]
    for record in (
        "build.log",
        "boot-bios.log",
        "boot-uefi.log",
        "boottest.json",
        "manifest.json",
        "packages.tsv",
        "SHA512SUMS",
        "xfail-build.json",
    ):
        assert f"build/bookworm-nocloud-amd64/{record}" in kept
    assert not any("image." in path for path in kept), "image data is not kept for ever"
    assert keep["needs"] == [{"job": "image:bookworm-nocloud-amd64", "artifacts": True}]
    assert keep["when"] == "always"


def test_release_triggers_the_release_project_with_inputs_that_identify_the_build_and_no_secret(tmp_path):
    from tasks.release import project

    doc = ci.pipeline(make_plan(tmp_path, protected="true", builder=PINNED, version="20261127-3"), "schedule")
    release = doc["release:bookworm"]
    assert release["stage"] == "release"
    assert release["rules"] == [{"if": '$CI_COMMIT_REF_PROTECTED == "true"', "when": "manual", "allow_failure": True}]
    inputs = release["trigger"].pop("inputs")
    assert release["trigger"] == {"project": "cloud-team/images-release", "branch": "main", "strategy": "depend"}
    assert "script" not in release and "tags" not in release, "a trigger job runs nothing itself"
    assert "variables" not in release, "inputs, not pipeline variables"
    assert release["inherit"] == {"variables": False}, "the build pipeline's own variables stay here"
    assert set(inputs) == {i.name for i in project.INPUTS}
    # Literal values: inputs are interpolated downstream, where $CI_PIPELINE_ID would be the release project's.
    assert not any("$" in value for value in inputs.values()), inputs
    assert (inputs["build_project"], inputs["pipeline_id"], inputs["ref"]) == ("cloud-team/images", "4710", "main")
    assert inputs["builder"] == PINNED, "the release runs in it too"
    cells = inputs["cells"].split()
    assert all(c.startswith("bookworm-") for c in cells) and len(set(cells)) == len(cells) == 12
    assert inputs["version"] == "20261127-3"
    assert [n["job"] for n in release["needs"]] == [f"keep:{c}" for c in cells]
    # No secret: nothing but CI's own identifiers and the cells (the release project holds the credentials).
    text = yaml.safe_dump(release)
    for secret in ("KEY", "TOKEN", "PASSWORD", "SECRET", "AWS_", "AZURE_", "GOOGLE_"):
        assert secret not in text
    for i in project.INPUTS:  # what the release project's spec:inputs will accept
        assert re.fullmatch(i.pattern, inputs[i.name]), i.name


def test_before_gitlab_17_11_the_trigger_passes_variables(tmp_path):
    from tasks.release import project

    data = copy.deepcopy(GOOD)
    data["ci"]["trigger_inputs"] = False
    release = ci.pipeline(make_plan(tmp_path, data, protected="true", builder=PINNED), "push")["release:bookworm"]
    assert "inputs" not in release["trigger"]
    assert set(release["variables"]) == {i.variable for i in project.INPUTS}
    assert release["variables"][project.PIPELINE] == "4710"
    pipeline = ci.release_project_pipeline(make_plan(tmp_path, data))
    assert len(pipeline) == 1 and pipeline[0]["default"]["image"] == "$IMAGES_BUILDER", "no spec:inputs header"


def test_the_release_trigger_is_written_in_a_gitlab_job_only(tmp_path, monkeypatch):
    with pytest.raises(ci.CiFailed, match="pinned by digest: give builder="):
        ci.pipeline(make_plan(tmp_path, protected="true"), "push")
    monkeypatch.delenv("CI_PIPELINE_ID")
    with pytest.raises(ci.CiFailed, match="names this pipeline by CI_PIPELINE_ID, which are not set"):
        ci.pipeline(make_plan(tmp_path, protected="true", builder=PINNED), "push")


# Which environment each job of a protected ref's pipeline names: the table of which secret it may see.
EXPECTED_ENVIRONMENTS = {"base": None, "image": None, "keep": "secrets/seal", "upload": "secrets/dailies"}


@pytest.mark.parametrize("protected", ["true", "false"])
def test_secrets_reach_only_the_jobs_that_use_them_on_runners_of_their_own(tmp_path, protected):
    doc = ci.pipeline(make_plan(tmp_path, protected=protected, builder=PINNED), "schedule")
    for name, job in doc.items():
        kind = name.partition(":")[0]
        if kind not in EXPECTED_ENVIRONMENTS:
            continue
        expected = EXPECTED_ENVIRONMENTS[kind] if protected == "true" else None
        assert (job.get("environment") or {}).get("name") == expected, name
        if expected:
            assert job["environment"] == {"name": expected, "action": "prepare"}, "no deployment recorded"
            assert job["tags"] == GOOD["ci"]["secret_tags"], f"{name}: runners for protected refs only"
        else:
            assert not set(job["tags"]) & set(GOOD["ci"]["secret_tags"]), name
    # Each secret's scope reaches exactly the jobs the table names.
    scopes = {secret.scope for secret in ci.SECRETS if secret.project == "build"}
    for scope in scopes:
        seeing = {
            name.partition(":")[0]
            for name, job in doc.items()
            if isinstance(job, dict) and fnmatch.fnmatchcase((job.get("environment") or {}).get("name", ""), scope)
        }
        assert seeing <= {"keep", "upload"} and (seeing or protected == "false"), (scope, seeing)


def test_the_written_pipeline_says_who_sees_which_secret(tmp_path):
    target = tmp_path / "pipeline.yml"
    ci.write(make_plan(tmp_path, protected="true", builder=PINNED), target)
    said = [line for line in target.read_text().splitlines() if line.startswith("# Secrets")]
    assert said == [
        '# Secrets (docs/gitlab-ci.md, "Which job sees which secret"): keep: jobs see environment secrets/seal, '
        "upload: jobs see environment secrets/dailies, on runners tagged protected-docker; base: and image: jobs "
        "see none."
    ]


def test_the_release_project_job_alone_sees_the_release_secrets(tmp_path):
    header, pipeline = ci.release_project_pipeline(make_plan(tmp_path))
    assert pipeline["release"]["environment"] == {"name": ci.RELEASE, "action": "prepare"}
    assert all(secret.scope == ci.RELEASE for secret in ci.SECRETS if secret.project == "release")
    assert set(header["spec"]["inputs"]) == {
        "build_project",
        "pipeline_id",
        "ref",
        "commit",
        "cells",
        "version",
        "builder",
    }


def test_keep_seals_each_cell(tmp_path):
    doc = ci.pipeline(make_plan(tmp_path), "push")
    keep = doc["keep:bookworm-nocloud-amd64"]
    assert keep["script"][-1] == "python3 -m tasks.release.handoff seal bookworm-nocloud-amd64 build"
    assert {"build/bookworm-nocloud-amd64/SHA512SUMS", "build/bookworm-nocloud-amd64/SHA512SUMS.asc"} <= set(
        keep["artifacts"]["paths"]
    )


def test_known_failures_are_allowed_to_fail(tmp_path):
    data = copy.deepcopy(GOOD)
    data["known_failures"] = [{"cells": "sid-azure-*", "reason": "waagent is not installable"}]
    p = make_plan(tmp_path, data)
    doc = ci.pipeline(p, "schedule")
    for job in ("image:sid-azure-amd64", "keep:sid-azure-arm64"):
        assert doc[job]["allow_failure"] is True
        assert doc[job]["variables"] == {"KNOWN_FAILURE": "waagent is not installable"}
    assert "allow_failure" not in doc["image:sid-ec2-amd64"]
    needs = {n["job"]: n for n in doc["upload:sid"]["needs"]}
    assert needs["image:sid-azure-amd64"]["optional"] is True
    assert "optional" not in needs["image:sid-ec2-amd64"]
    target = tmp_path / "pipeline.yml"
    ci.write(p, target)
    assert "#   sid-azure-amd64: waagent is not installable" in target.read_text()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: d["ci"]["tiers"].update(schedule="nightly"),
            "ci.tiers.schedule: no tier named 'nightly' (expected one of: push, full)",
        ),
        (
            lambda d: d["ci"]["build_tags"].update(riscv64=["x"]),
            "ci.build_tags.riscv64: unknown architecture 'riscv64' (expected one of: amd64, arm64)",
        ),
        (
            lambda d: d["ci"]["build_tags"].update(riscv64=["x"]),
            "ci.build_tags.riscv64: unknown architecture 'riscv64' (expected one of: amd64, arm64)",
        ),
        (
            lambda d: d["ci"].update(tags=["ok", "bad;tag"]),
            "ci.tags[1]: expected a runner tag (letters, digits, ' _.:/-'), got 'bad;tag'",
        ),
        (lambda d: d["ci"].update(tags=[]), "ci.tags: expected a non-empty list, got a list"),
        (
            lambda d: d["ci"].update(expire_images="a week"),
            "ci.expire_images: expected a GitLab duration such as '7 days' or 'never', got 'a week'",
        ),
        (
            lambda d: d["ci"].update(runner="x"),
            "ci.runner: unknown key (expected one of: image, tags, build_tags, expire_images, tiers, "
            "release_project, release_branch, build_project, secret_tags, gitlab_url, trigger_inputs)",
        ),
        (
            lambda d: d["ci"].update(release_project="just-a-name"),
            "ci.release_project: expected a GitLab project path (group/name), got 'just-a-name'",
        ),
    ],
)
def test_bad_ci_settings_are_refused_before_any_yaml(tmp_path, mutate, message):
    data = copy.deepcopy(GOOD)
    mutate(data)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(MatrixError) as caught:
        make_plan(tmp_path, data)
    assert str(caught.value).endswith(message)
    result = subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "ci", f"matrix={bad}", f"workdir={tmp_path / 'w'}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.strip().endswith(message)
    assert not (tmp_path / "w" / "ci" / "pipeline.yml").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"source": "cron"}, "source: expected one of: push, schedule, web, api"),
        ({"source": "web", "cells": "potato-*"}, "cells='potato-*' matches no cell"),
    ],
)
def test_bad_source_or_cells_fail_without_writing(tmp_path, options, message):
    args = [f"{k}={v}" for k, v in options.items()]
    result = subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "ci", *args, f"workdir={tmp_path}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "ci" / "pipeline.yml").exists()


# --------------------------------------------------------------------------
# gitlab-ci-local: GitLab's schema, and how it reads the jobs

needs_gitlab_ci_local = pytest.mark.skipif(
    shutil.which("gitlab-ci-local") is None, reason="gitlab-ci-local is installed by tools/setup-host"
)


def gitlab_ci_local(directory: Path, *args, timeout=120, runner=()) -> subprocess.CompletedProcess:
    """gitlab-ci-local in directory; runner: what runs it (tools/in-builder: the builder image)."""
    return subprocess.run(
        [*runner, "gitlab-ci-local", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "FORCE_COLOR": "0"},
    )


def project_with(tmp_path: Path, pipeline_text: str, name: str = "project") -> Path:
    """A git checkout of this project whose .gitlab-ci.yml is the given pipeline."""
    project = tmp_path / name
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(project)], check=True)
    for tracked in subprocess.run(
        ["git", "ls-files", "--modified", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split():
        # the working tree as it is, not as committed
        if (REPO / tracked).is_file():
            (project / tracked).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / tracked, project / tracked)
    (project / ".gitlab-ci.yml").write_text(pipeline_text)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    # --allow-empty: the project's own .gitlab-ci.yml, in a clean checkout, changes nothing.
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--allow-empty", "-qm", "pipeline"],
        cwd=project,
        check=True,
    )
    return project


def listed_jobs(result) -> list[str]:
    names = []
    for line in result.stdout.splitlines()[1:]:
        if line.strip():
            names.append(line.split()[0])
    return names


@needs_gitlab_ci_local
@pytest.mark.parametrize("source, trigger_inputs", [("push", True), ("schedule", True), ("push", False)])
def test_generated_pipeline_passes_gitlab_schema(tmp_path, source, trigger_inputs):
    data = copy.deepcopy(GOOD)
    data["ci"]["trigger_inputs"] = trigger_inputs
    target = tmp_path / "pipeline.yml"
    ci.write(make_plan(tmp_path, data, source=source, version="20261125-1", protected="true", builder=PINNED), target)
    document = yaml.safe_load(target.read_text())
    # gitlab-ci-local 4.60's schema predates trigger:inputs (GitLab 17.11): it checks the rest of the job; the
    # inputs are checked against the release project's spec (test_release_triggers_the_release_project...).
    for name in jobs(document, "release:"):
        assert ("inputs" in document[name]["trigger"]) == trigger_inputs
        document[name]["trigger"].pop("inputs", None)
    project = project_with(tmp_path, yaml.safe_dump(document, sort_keys=False))
    result = gitlab_ci_local(project, "--list")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "json schema validated" in result.stdout + result.stderr
    listed = listed_jobs(result)
    assert "image:bookworm-nocloud-amd64" in listed
    assert ("upload:bookworm" in listed) == (source == "schedule")


@needs_gitlab_ci_local
def test_project_pipeline_passes_gitlab_schema(tmp_path):
    project = project_with(tmp_path, (REPO / ".gitlab-ci.yml").read_text())
    result = gitlab_ci_local(project, "--list", "--variable", "CI_PIPELINE_SOURCE=push")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "json schema validated" in result.stdout + result.stderr
    assert {"builder", "lint", "quick-tests", "generate"} <= set(listed_jobs(result))
