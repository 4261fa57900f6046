"""The builder image (tasks/builder): made from nothing here, holding every tool, and
running CI's jobs.

Its run starts with the test session (tests/background.py), as a CI job without
privileges makes it; these tests go last and wait for it. The generated push
pipeline then runs in it under gitlab-ci-local (its shell executor, inside the
image): base, build, boot test, seal, and the release project's publication, all
with the image's Debian 13 tools on this host, and the cell it builds has the
facts of the same cell built with the host's own tools (tests/pushtier.py).
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks import ci
from tasks.builder import image as builder_image
from tasks.builder import inputs
from tasks.model.arch import Arch
from tasks.stages import imagefacts

from . import pushtier
from .background import BackgroundRun
from .test_ci import GOOD, gitlab_ci_local, make_plan, project_with

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root")]

# Started with the test session, these tests running last (tests/background.py).
BACKGROUND_RUN = BackgroundRun("builder", ["builder"], unprivileged=True)


@pytest.fixture(scope="module")
def builder():
    """The image's name once loaded into podman from the archive the run made."""
    returncode, output = BACKGROUND_RUN.wait(timeout=3600)
    print(output[-5000:])
    assert returncode == 0, output[-3000:]
    archive = inputs.archive(BACKGROUND_RUN.workdir)
    had = subprocess.run(["podman", "image", "exists", inputs.tag()]).returncode == 0
    loaded = subprocess.run(
        ["podman", "load", "--input", str(archive)], capture_output=True, text=True, check=True
    ).stdout
    assert f"Loaded image: {inputs.tag()}" in loaded
    yield inputs.tag()
    if not had:  # this machine's own image of these inputs stays
        subprocess.run(["podman", "rmi", inputs.tag()], capture_output=True)


def in_builder(image: str, *volumes: Path) -> list[str]:
    """What runs a command in image: tools/in-builder, these directories bound in."""
    return [
        "env",
        f"IMAGES_BUILDER={image}",
        f"UNPRIVILEGED_VOLUMES={' '.join(map(str, volumes))}",
        str(REPO / "tools" / "in-builder"),
    ]


def run_in(image: str, *command: str) -> str:
    result = subprocess.run([*in_builder(image), *command], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_builder_is_debian_13_with_every_tool_the_project_runs(builder):
    assert run_in(builder, "cat", "/etc/debian_version").startswith("13.")
    # Every package tools/packages names is there, but what only installed and built the npm tools.
    wanted = [p for p in inputs.packages() if p not in inputs.BUILD_ONLY]
    status = run_in(builder, "dpkg-query", "--show", "--showformat", "${Package} ${db:Status-Status}\\n", *wanted)
    assert sorted(line.split()[0] for line in status.splitlines() if line.endswith(" installed")) == sorted(wanted)
    assert run_in(builder, "sh", "-c", "for c in g++ npm; do command -v $c; done; true").strip() == ""
    # The project's environment first on PATH, with the project's and the tests' packages.
    assert run_in(builder, "sh", "-c", "for c in python3 doit pytest; do command -v $c; done").split() == [
        f"{builder_image.VENV}/bin/{name}" for name in ("python3", "doit", "pytest")
    ]
    run_in(builder, "python3", "-c", "import doit, yaml, xxhash, requests, rich, boto3, debsbom, moto")
    # The npm tools at the versions tools/npm's lock pins.
    lock = json.loads((REPO / "tools/npm/package-lock.json").read_text())["packages"]
    assert run_in(builder, "gitlab-ci-local", "--version").strip() == lock["node_modules/gitlab-ci-local"]["version"]
    assert run_in(builder, "azurite-blob", "--version").strip() == lock["node_modules/azurite"]["version"]
    # The firmware files the boot test names (tasks/model/arch.py), in every architecture.
    firmware = {
        f
        for arch in Arch
        for m in arch.value.machines.values()
        for f in (m.uefi_code, m.uefi_vars, m.firmware_file)
        if f
    }
    run_in(builder, "ls", *sorted(firmware))


def test_the_builder_is_made_again_only_when_its_inputs_change(builder):
    again = subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "builder", f"workdir={BACKGROUND_RUN.workdir}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert "-- builder" in again.stdout, again.stdout


def test_the_generated_pipeline_runs_in_the_builder_and_builds_what_the_host_builds(builder, push_tier_runs, tmp_path):
    """gitlab-ci-local's shell executor runs a generated push pipeline in the builder image: real doit
    jobs, artifacts handed from job to job, each cell sealed with the build key; then the release
    project's pipeline releases the build from those artifacts, fetched through GitLab's job-artifacts
    API. The cell is what the host's own tools build."""
    from tasks.system import signing

    from .conftest import make_key

    # Keys in tmp_path, which is bound into the builder.
    release_key, build_key = make_key(tmp_path / "release-key"), make_key(tmp_path / "build-key", name="Test builds")
    data = copy.deepcopy(GOOD)
    data["tiers"]["push"] = [{"releases": ["bookworm"], "vendors": ["nocloud"], "architectures": ["amd64"]}]
    data["compress"]["xz_level"] = 0
    # One boot: the pipeline's jobs are under test here; both firmwares boot in test_end_to_end.
    data["architectures"]["amd64"]["firmware"] = ["uefi"]
    target = tmp_path / "pipeline.yml"
    ci.write(make_plan(tmp_path, data, source="push", version="20261207-1"), target)
    project = project_with(tmp_path, target.read_text())
    (project / "matrix.yaml").write_text(yaml.safe_dump(data, sort_keys=False))  # the jobs' doit reads it
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "test matrix"], cwd=project, check=True
    )
    common = ["--force-shell-executor", "--shell-isolation"]
    # gitlab-ci-local and its shell executor's jobs run in the builder image, as GitLab's runner runs
    # them in it: its tools only, nothing of this host's but the kernel (tools/in-builder).
    runner = in_builder(builder, tmp_path)
    # The build project's key: a protected variable, which the keep jobs seal with.
    sealing = [arg for name, value in build_key.environment().items() for arg in ("--variable", f"{name}={value}")]

    run = gitlab_ci_local(project, *common, *sealing, timeout=3600, runner=runner)
    print(run.stdout[-20000:], run.stderr[-5000:])
    assert run.returncode == 0
    for job in ("base:bookworm-amd64", "image:bookworm-nocloud-amd64", "keep:bookworm-nocloud-amd64"):
        assert f"PASS  {job}" in run.stdout
    assert "release:bookworm" not in run.stdout, "an unprotected ref's pipeline has no release job"

    def artifacts(job):  # gitlab-ci-local keeps each job's artifacts in a directory named after it
        return project / ".gitlab-ci-local" / "artifacts" / job.replace(":", "Og")

    image = artifacts("image:bookworm-nocloud-amd64") / "build" / "bookworm-nocloud-amd64"
    assert (image / "image.tar.xz").is_file() and (image / "manifest.json").is_file()
    assert not (image / "disk.raw").exists(), "the raw disk is not an artifact"
    kept = artifacts("keep:bookworm-nocloud-amd64") / "build" / "bookworm-nocloud-amd64"
    assert {p.name for p in kept.iterdir()} >= {
        "build.log",
        "manifest.json",
        "boottest.json",
        "SHA512SUMS",
        "SHA512SUMS.asc",
    }
    assert not (kept / "image.tar.xz").exists()
    check = subprocess.run(
        ["sha512sum", "--check", str(kept / "SHA512SUMS")], cwd=image, capture_output=True, text=True
    )
    assert check.returncode == 0, "keep sealed the image job's artifacts: " + check.stdout + check.stderr
    with signing.public_keyring(build_key.public) as keyring:
        assert signing.verify_detached(keyring, kept / "SHA512SUMS.asc", kept / "SHA512SUMS") is None

    # The manual release job triggers the release project's pipeline: it fetches these jobs' artifacts
    # through GitLab's API (served here from gitlab-ci-local's artifacts), checks them and releases.
    from tasks.release import gitlab
    from tasks.release import project as release_project

    from .gitlab_api import GitLabApi, zip_directory

    api = GitLabApi().start()
    try:
        build = api.project("cloud-team/images")
        # The project's pipeline (1) and the child pipeline its trigger job made (2), which holds the jobs.
        build.pipelines[1] = {"ref": "main", "sha": "c" * 40, "tag": False, "status": "success", "source": "push"}
        build.pipelines[2] = {**build.pipelines[1], "source": "parent_pipeline"}
        build.children[1] = 2
        build.branches["main"] = True
        build.jobs[2] = []
        for job_id, job in enumerate(("image:bookworm-nocloud-amd64", "keep:bookworm-nocloud-amd64"), 10):
            build.jobs[2].append({"id": job_id, "name": job, "status": "success", "artifacts_expire_at": None})
            build.artifacts[job_id] = zip_directory(artifacts(job), [artifacts(job) / "build"])
        # The release project's pipeline with the trigger's inputs (gitlab-ci-local takes them through an include).
        inputs = {
            "build_project": "cloud-team/images",
            "pipeline_id": "1",
            "ref": "main",
            "commit": "c" * 40,
            "cells": "bookworm-nocloud-amd64",
            "version": "20261207-1",
            "builder": "",
        }
        include = {"include": [{"local": str(ci.RELEASE_PROJECT_PIPELINE), "inputs": inputs}]}
        releaser = project_with(tmp_path, yaml.safe_dump(include, sort_keys=False), "release-project")
        released_matrix = copy.deepcopy(data)
        released_matrix["ci"]["gitlab_url"] = api.url.removesuffix("/api/v4")
        (releaser / "matrix.yaml").write_text(yaml.safe_dump(released_matrix, sort_keys=False))
        released = tmp_path / "released"
        variables = {
            "CI_PIPELINE_SOURCE": "pipeline",
            "CI_API_V4_URL": api.url,
            gitlab.API_TOKEN_ENV: "build-token",
            release_project.STORAGE_ENV: released.as_uri(),
            release_project.PUBLIC_KEY_ENV: str(build_key.public),
            **release_key.environment(),  # the release signs with its own key
        }
        release = gitlab_ci_local(
            releaser,
            *common,
            *(arg for name, value in variables.items() for arg in ("--variable", f"{name}={value}")),
            "release",
            timeout=600,
            runner=runner,
        )
    finally:
        api.stop()
    print(release.stdout[-5000:], release.stderr[-2000:])
    assert release.returncode == 0 and "PASS  release" in release.stdout
    published = released / "bookworm" / "20261207-1"
    assert (published / "debian-12-nocloud-amd64-20261207-1.tar.xz").is_file()
    check = subprocess.run(
        ["sha512sum", "--check", "--strict", "SHA512SUMS"], cwd=published, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    with signing.public_keyring(release_key.public) as keyring:
        assert signing.verify_detached(keyring, published / "SHA512SUMS.asc", published / "SHA512SUMS") is None
    assert (released / "bookworm" / "latest").read_text() == "20261207-1\n"
    record = releaser / ".gitlab-ci-local" / "artifacts" / "release" / "build" / "bookworm-nocloud-amd64"
    assert json.loads((record / "release.json").read_text())["published"]["directory"] == "bookworm/20261207-1"

    # The same image as the host's tools make from the same archive (tests/pushtier.py).
    built = imagefacts.load(artifacts("image:bookworm-nocloud-amd64") / "build/bookworm-nocloud-amd64/facts.json")
    on_host = imagefacts.load(pushtier.facts_as_built(push_tier_runs[0], "bookworm-nocloud-amd64"))
    assert imagefacts.compare(built, on_host) == []
