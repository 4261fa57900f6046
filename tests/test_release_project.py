"""The release project: admitting a build pipeline's trigger, fetching its artifacts through
GitLab's API (a local server answering as GitLab documents: tests/gitlab_api.py), checking them
against the keep job's signed seal, and releasing each cell; in-process and under gitlab-ci-local."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from tasks import ci
from tasks.errors import StageFailed
from tasks.model import plan as plan_module
from tasks.release import gitlab, handoff, project
from tasks.stages import manifest
from tasks.system import signing

from .conftest import KeyFiles, fake_outputs, make_key
from .gitlab_api import GitLabApi, zip_directory
from .test_ci import gitlab_ci_local, needs_gitlab_ci_local, project_with

REPO = Path(__file__).resolve().parent.parent
FIXTURE_MATRIX = REPO / "tests" / "data" / "matrix.yaml"
BUILD = "cloud-team/images"
PARENT, PIPELINE = 4710, 4711  # the build project's pipeline, and the child pipeline its trigger job made
COMMIT = "a" * 40
VERSION = "20261127-3"
CELLS = ("bookworm-nocloud-amd64",)


@pytest.fixture(scope="module")
def build_key(tmp_path_factory) -> KeyFiles:
    """The build project's key (the keep job seals with it); not the release key."""
    return make_key(tmp_path_factory.mktemp("build-key"), name="Test builds")


@pytest.fixture
def api():
    server = GitLabApi().start()
    yield server
    server.stop()


def build_pipeline(
    api: GitLabApi, checkout: Path, test_matrix, key: KeyFiles, cells=CELLS, ref="main", protected=True, failed=()
):
    """What a build pipeline of the build project leaves: per cell an image job's artifacts and a
    keep job's (sealed with key), as zip archives with the build checkout's paths."""
    build = api.project(BUILD)
    build.pipelines[PARENT] = {"ref": ref, "sha": COMMIT, "tag": False, "status": "success", "source": "push"}
    build.pipelines[PIPELINE] = {**build.pipelines[PARENT], "source": "parent_pipeline"}
    build.children[PARENT] = PIPELINE
    build.branches[ref] = protected
    jobs = []
    for index, name in enumerate(cells):
        cell = test_matrix.cell(name)
        files = fake_outputs(checkout / "build", cell, version=VERSION)
        manifest.write(cell, files)
        image_id, keep_id = 100 + 2 * index, 101 + 2 * index
        build.artifacts[image_id] = zip_directory(checkout, [files.dir])
        with signing.signer(signing.KeyConfig(key.secret, key.fingerprint)) as signer:
            handoff.seal(files, signer)
        build.artifacts[keep_id] = zip_directory(checkout, [p for p in files.records if p.exists()])
        status = "failed" if name in failed else "success"
        jobs += [
            {"id": image_id, "name": f"image:{name}", "status": status, "artifacts_expire_at": "2026-12-04T00:00:00Z"},
            {"id": keep_id, "name": f"keep:{name}", "status": "success", "artifacts_expire_at": None},
        ]
    # A retried job's earlier attempt: GitLab lists it only when asked (include_retried).
    jobs.insert(0, {**jobs[0], "id": 7, "status": "failed", "retried": True})
    build.jobs[PIPELINE] = jobs
    return build


PINNED_BUILDER = "registry.example.org/cloud-team/images/builder@sha256:" + "ab" * 32


def matrix_for(api: GitLabApi, tmp_path: Path, data: dict | None = None) -> Path:
    """The test matrix, naming the local GitLab as ci.gitlab_url: the one the release asks."""
    data = copy.deepcopy(data or yaml.safe_load(FIXTURE_MATRIX.read_text()))
    data["ci"]["gitlab_url"] = api.url.removesuffix("/api/v4")
    path = tmp_path / "release-matrix.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def inputs_of(env: dict) -> dict:
    """The trigger's values as inputs (trigger:inputs), from the variables the fallback passes."""
    return {i.name: env.get(i.variable, "") for i in project.INPUTS}


def trigger_env(api: GitLabApi, tmp_path: Path, key: KeyFiles, cells=CELLS, **overrides) -> dict:
    return {
        **os.environ,
        "CI_PIPELINE_SOURCE": "pipeline",
        "CI_API_V4_URL": api.url,  # GitLab's own, the same as ci.gitlab_url's
        gitlab.API_TOKEN_ENV: "build-token",
        project.PROJECT: BUILD,
        project.PIPELINE: str(PARENT),
        project.REF: "main",
        project.COMMIT: COMMIT,
        project.CELLS: " ".join(cells),
        project.VERSION: VERSION,
        project.STORAGE_ENV: (tmp_path / "released").as_uri(),
        project.PUBLIC_KEY_ENV: str(key.public),
        "IMAGES_WORKDIR": str(tmp_path / "release-work"),
        **overrides,
    }


def test_a_protected_build_is_fetched_checked_and_released(test_matrix, tmp_path, api, build_key, signing_env):
    build_pipeline(api, tmp_path / "checkout", test_matrix, build_key)
    outcomes = project.run(trigger_env(api, tmp_path, build_key), REPO, matrix_for(api, tmp_path))
    assert [(o.cell, o.state) for o in outcomes] == [("bookworm-nocloud-amd64", "released")]
    published = tmp_path / "released" / "bookworm" / VERSION
    assert (published / f"debian-12-nocloud-amd64-{VERSION}.tar.xz").is_file()
    check = subprocess.run(["sha512sum", "--check", "--strict", "SHA512SUMS"], cwd=published, capture_output=True)
    assert check.returncode == 0
    with signing.public_keyring(signing_env.public) as keyring:  # signed with the release key, not the build's
        assert signing.verify_detached(keyring, published / "SHA512SUMS.asc", published / "SHA512SUMS") is None
    fetched = {p for p, _ in api.requests}
    assert f"/api/v4/projects/{BUILD.replace('/', '%2F')}/jobs/7/artifacts" not in fetched, "the retried job's last try"
    assert all(auth == "PRIVATE-TOKEN" for _, auth in api.requests)


def _refusal(test_matrix, tmp_path, api, build_key, **env) -> str:
    with pytest.raises(StageFailed) as caught:
        project.run(trigger_env(api, tmp_path, build_key, **env), REPO, matrix_for(api, tmp_path))
    assert not (tmp_path / "released").exists(), "nothing is released"
    assert "\n" not in str(caught.value), "one line"
    return str(caught.value)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"CI_PIPELINE_SOURCE": "push"}, "runs when a build pipeline triggers it"),
        ({project.PROJECT: "someone/fork"}, "builds of someone/fork are not released here"),
        ({project.REF: "feature"}, "pipeline 4710 built main"),
        ({project.COMMIT: "b" * 40}, "not main at bbbb"),
        ({project.CELLS: ""}, "the trigger passed no RELEASE_CELLS"),
        ({project.VERSION: "latest"}, f"the trigger's {project.VERSION} is not the images' version: 'latest'"),
        ({project.CELLS: "x'; rm -rf /"}, "the trigger's RELEASE_CELLS is not the cells to release"),
        ({project.PIPELINE: str(PIPELINE)}, "pipeline 4711 is a child pipeline"),
        # A pipeline variable that sends the token elsewhere: refused before any request.
        ({"CI_API_V4_URL": "http://127.0.0.1:9/api/v4"}, "CI_API_V4_URL is http://127.0.0.1:9/api/v4, not"),
        ({project.STORAGE_ENV: ""}, "IMAGES_RELEASE_STORAGE"),
        ({project.PUBLIC_KEY_ENV: "/nonexistent.asc"}, "IMAGES_BUILD_PUBLIC_KEY"),
        # In GitLab the job names its image: the build's builder, by digest, and no other.
        (
            {"CI_JOB_IMAGE": "debian:trixie", project.BUILDER: "debian:trixie"},
            "IMAGES_BUILDER is not the builder image",
        ),
        ({"CI_JOB_IMAGE": "debian:trixie", project.BUILDER: PINNED_BUILDER}, "not in the build's builder image"),
        ({"CI_JOB_IMAGE": PINNED_BUILDER, project.BUILDER: PINNED_BUILDER[:-1] + "0"}, "not in the build's builder"),
        ({"CI_JOB_IMAGE": PINNED_BUILDER, project.BUILDER: ""}, "builder: not passed"),
    ],
)
def test_a_trigger_that_is_not_the_build_projects_is_refused(test_matrix, tmp_path, api, build_key, env, expected):
    build_pipeline(api, tmp_path / "checkout", test_matrix, build_key)
    assert expected in _refusal(test_matrix, tmp_path, api, build_key, **env)


def test_a_job_in_the_builds_own_builder_image_is_admitted(test_matrix, tmp_path, api, build_key, signing_env):
    build_pipeline(api, tmp_path / "checkout", test_matrix, build_key)
    env = trigger_env(api, tmp_path, build_key, CI_JOB_IMAGE=PINNED_BUILDER, **{project.BUILDER: PINNED_BUILDER})
    assert [o.state for o in project.run(env, REPO, matrix_for(api, tmp_path))] == ["released"]


def test_a_pipeline_of_an_unprotected_ref_is_refused(test_matrix, tmp_path, api, build_key):
    build_pipeline(api, tmp_path / "checkout", test_matrix, build_key, ref="feature", protected=False)
    message = _refusal(test_matrix, tmp_path, api, build_key, **{project.REF: "feature"})
    assert message == "refused: feature is not a protected ref of cloud-team/images: only pipelines of protected " + (
        "branches and tags release"
    )


@pytest.mark.parametrize(
    "token_env, expected",
    [
        ({gitlab.API_TOKEN_ENV: "wrong", "CI_JOB_TOKEN": ""}, "GitLab refused the token (HTTP 401)"),
        ({gitlab.API_TOKEN_ENV: "", "CI_JOB_TOKEN": ""}, "no token to read the build project with"),
    ],
)
def test_a_missing_or_refused_token_stops_the_release(test_matrix, tmp_path, api, build_key, token_env, expected):
    build_pipeline(api, tmp_path / "checkout", test_matrix, build_key)
    with pytest.raises(gitlab.GitLabRefused, match=expected.replace("(", r"\(").replace(")", r"\)")):
        project.run(trigger_env(api, tmp_path, build_key, **token_env), REPO, matrix_for(api, tmp_path))
    assert not (tmp_path / "released").exists()


def test_the_job_token_cannot_admit_a_build_and_is_never_sent(test_matrix, tmp_path, api, build_key):
    """GitLab takes the job token on a few endpoints only: for a pipeline or a branch it answers as to anyone,
    404 for a private project. So the release asks for an access token and never sends the job token."""
    api.job_tokens = ("job-token",)
    build_pipeline(api, tmp_path / "checkout", test_matrix, build_key)
    env = trigger_env(api, tmp_path, build_key, **{gitlab.API_TOKEN_ENV: "", "CI_JOB_TOKEN": "job-token"})
    with pytest.raises(gitlab.GitLabRefused, match="GitLab's job token cannot read a pipeline"):
        project.run(env, REPO, matrix_for(api, tmp_path))
    assert api.requests == [], "nothing asked"
    # What GitLab would have answered.
    pipeline = f"{api.url}/projects/{BUILD.replace('/', '%2F')}/pipelines/{PARENT}"
    assert requests.get(pipeline, headers={"JOB-TOKEN": "job-token"}, timeout=10).status_code == 404
    assert requests.get(pipeline, timeout=10).status_code == 404, "no token: a private project is not there"
    jobs = pipeline.replace(str(PARENT), str(PIPELINE)) + "/jobs"
    assert requests.get(jobs, headers={"JOB-TOKEN": "job-token"}, timeout=10).status_code == 403, "not allowlisted"
    api.job_token_allowed = True
    assert requests.get(jobs, headers={"JOB-TOKEN": "job-token"}, timeout=10).status_code == 200, "where it is taken"
    assert requests.get(pipeline, headers={"PRIVATE-TOKEN": "wrong"}, timeout=10).status_code == 401


def test_inputs_are_the_trigger_and_variables_cannot_change_them(test_matrix, tmp_path, api, build_key, signing_env):
    """trigger:inputs, on the job's command line: the fallback's variables, even set, are not read."""
    build_pipeline(api, tmp_path / "checkout", test_matrix, build_key)
    env = trigger_env(api, tmp_path, build_key)
    given = inputs_of(env)
    env.update({project.PROJECT: "someone/fork", project.PIPELINE: "1", project.CELLS: "sid-ec2-arm64"})
    assert [o.state for o in project.run(env, REPO, matrix_for(api, tmp_path), given)] == ["released"]
    argv = [arg for i in project.INPUTS for arg in (i.option, given[i.name])]
    assert project.arguments(argv) == given


def test_artifact_downloads_follow_the_redirect_without_the_token(test_matrix, tmp_path, api, build_key, signing_env):
    build_pipeline(api, tmp_path / "checkout", test_matrix, build_key)
    assert [o.state for o in project.run(trigger_env(api, tmp_path, build_key), REPO, matrix_for(api, tmp_path))] == [
        "released"
    ]
    downloads = api.object_storage.requests
    assert len(downloads) == 2, "the image and the keep job's archives, from the object storage"
    assert all(not {"PRIVATE-TOKEN", "JOB-TOKEN", "Authorization"} & set(r.headers) for r in downloads)


def test_expired_artifacts_stop_the_release_with_one_line(test_matrix, tmp_path, api, build_key):
    build = build_pipeline(api, tmp_path / "checkout", test_matrix, build_key)
    build.artifacts[100] = None  # GitLab answers 404 once they expired
    build.jobs[PIPELINE][1]["artifacts_expire_at"] = "2026-11-20T08:00:00.000Z"
    message = _refusal(test_matrix, tmp_path, api, build_key)
    assert message == (
        "the artifacts of image:bookworm-nocloud-amd64 (job 100): they expired at 2026-11-20T08:00:00.000Z; "
        "build the cells again"
    )


def _tampered(archive: bytes, member_suffix: str, content: bytes) -> bytes:
    import io
    import zipfile

    source, target = zipfile.ZipFile(io.BytesIO(archive)), io.BytesIO()
    with zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            out.writestr(info, content if info.filename.endswith(member_suffix) else source.read(info))
    return target.getvalue()


@pytest.mark.parametrize(
    "job, member, expected",
    [
        (100, "image.tar.xz", "image.tar.xz does not match the SHA-512 the build's manifest gives"),
        (100, "manifest.json", "manifest.json does not match the build's SHA512SUMS"),
        (101, "SHA512SUMS", "SHA512SUMS is not signed by the build project's key"),
    ],
)
def test_artifacts_that_are_not_as_built_are_refused(test_matrix, tmp_path, api, build_key, job, member, expected):
    build = build_pipeline(api, tmp_path / "checkout", test_matrix, build_key)
    build.artifacts[job] = _tampered(build.artifacts[job], member, b"not what was built\n")
    assert expected in _refusal(test_matrix, tmp_path, api, build_key)


def test_a_seal_by_another_key_is_refused(test_matrix, tmp_path, api, build_key, test_key):
    build_pipeline(api, tmp_path / "checkout", test_matrix, test_key)  # sealed with the release key, say
    assert "is not signed by the build project's key" in _refusal(test_matrix, tmp_path, api, build_key)


def test_a_known_failure_not_built_is_skipped_and_the_others_released(
    test_matrix, tmp_path, api, build_key, signing_env
):
    data = yaml.safe_load(FIXTURE_MATRIX.read_text())
    data["known_failures"] = [{"cells": "bookworm-generic-amd64", "reason": "test: does not build"}]
    matrix = matrix_for(api, tmp_path, data)
    cells = ("bookworm-nocloud-amd64", "bookworm-generic-amd64")
    build_pipeline(api, tmp_path / "checkout", test_matrix, build_key, cells=cells, failed=cells[1:])
    outcomes = project.run(trigger_env(api, tmp_path, build_key, cells=cells), REPO, matrix)
    assert [(o.cell, o.state) for o in outcomes] == [(cells[0], "released"), (cells[1], "skipped")]
    assert "test: does not build" in outcomes[1].detail


def test_jobs_are_read_across_pages(test_matrix, tmp_path, build_key, signing_env):
    api = GitLabApi(per_page_limit=1).start()  # one job per page
    try:
        build_pipeline(api, tmp_path / "checkout", test_matrix, build_key)
        assert [
            o.state for o in project.run(trigger_env(api, tmp_path, build_key), REPO, matrix_for(api, tmp_path))
        ] == ["released"]
        assert sum(path.endswith("/jobs") for path, _ in api.requests) == 2, "two jobs, each on a page of its own"
    finally:
        api.stop()


def test_artifact_members_outside_the_cell_are_not_unpacked(tmp_path):
    import zipfile

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("build/c/manifest.json", "{}")
        out.writestr("build/other/manifest.json", "{}")
        out.writestr("build/c/../../escape", "x")
    with pytest.raises(gitlab.GitLabRefused, match="points outside"):
        gitlab.extract(archive, "build/c", tmp_path / "out")
    assert not (tmp_path / "escape").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["manifest.json"]


# --------------------------------------------------------------------------
# The release project's pipeline


def test_the_committed_release_pipeline_is_the_generated_one(tmp_path):
    plan = plan_module.from_options(REPO, {"workdir": str(tmp_path)}.get)
    generated = tmp_path / "release-project.yml"
    ci.write_release_project(plan, generated)
    assert (REPO / ci.RELEASE_PROJECT_PIPELINE).read_text() == generated.read_text(), "run `doit release_ci`"


@needs_gitlab_ci_local
@pytest.mark.skipif(os.geteuid() != 0, reason="the instance test boots the image: root")
def test_the_release_project_pipeline_runs_under_gitlab_ci_local(test_matrix, tmp_path, api, build_key, test_key):
    """The release project's own pipeline file, run by gitlab-ci-local's shell executor with the trigger's
    inputs: it fetches from the GitLab API server, releases, and keeps its records. A trigger that sets
    CI_API_V4_URL is refused before any request; with a tampered image it fails and releases nothing.

    gitlab-ci-local takes no pipeline inputs on its command line: a one-line .gitlab-ci.yml includes the
    file with them, which interpolates its spec:inputs as GitLab does for the pipeline's own."""
    project_dir = project_with(tmp_path, "")
    matrix = matrix_for(api, tmp_path)
    (project_dir / "matrix.yaml").write_text(matrix.read_text())
    build = build_pipeline(api, tmp_path / "checkout", test_matrix, build_key)
    released = tmp_path / "released"
    env = trigger_env(api, tmp_path, build_key)
    include = {"local": str(ci.RELEASE_PROJECT_PIPELINE), "inputs": inputs_of(env)}
    (project_dir / ".gitlab-ci.yml").write_text(yaml.safe_dump({"include": [include]}, sort_keys=False))
    variables = [f"{name}={env[name]}" for name in (gitlab.API_TOKEN_ENV, project.STORAGE_ENV)]
    variables += [f"{name}={value}" for name, value in test_key.environment().items()]
    variables += [f"{project.PUBLIC_KEY_ENV}={build_key.public}", f"IMAGES_VENV={REPO / '.venv'}"]
    common = ["--force-shell-executor", "--shell-isolation", "--variable", "CI_PIPELINE_SOURCE=pipeline"]
    common += [arg for variable in variables for arg in ("--variable", variable)]

    # A trigger (or anyone setting pipeline variables) that points the API elsewhere: refused, nothing asked.
    elsewhere = api.url.replace("127.0.0.1", "127.0.0.2")
    run = gitlab_ci_local(project_dir, *common, "--variable", f"CI_API_V4_URL={elsewhere}", "release", timeout=600)
    assert run.returncode != 0
    assert f"refused: CI_API_V4_URL is {elsewhere}, not {api.url}" in run.stdout + run.stderr
    assert api.requests == [] and not released.exists()

    run = gitlab_ci_local(project_dir, *common, "--variable", f"CI_API_V4_URL={api.url}", "release", timeout=600)
    print(run.stdout[-6000:], run.stderr[-2000:])
    assert run.returncode == 0 and "PASS  release" in run.stdout
    assert "bookworm-nocloud-amd64  released" in run.stdout
    assert f"--pipeline-id '{PARENT}'" in run.stdout, "the inputs, interpolated into the job's command"
    published = released / "bookworm" / VERSION
    assert (published / f"debian-12-nocloud-amd64-{VERSION}.tar.xz").is_file()
    record = project_dir / ".gitlab-ci-local" / "artifacts" / "release" / "build" / "bookworm-nocloud-amd64"
    assert (record / "release.json").is_file(), "the release record is kept as an artifact"

    shutil.rmtree(released)
    build.artifacts[100] = _tampered(build.artifacts[100], "image.tar.xz", b"tampered\n")
    shutil.rmtree(project_dir / "build", ignore_errors=True)
    run = gitlab_ci_local(project_dir, *common, "--variable", f"CI_API_V4_URL={api.url}", "release", timeout=600)
    print(run.stdout[-3000:])
    assert run.returncode != 0
    assert "image.tar.xz does not match the SHA-512 the build's manifest gives" in run.stdout + run.stderr
    assert not released.exists()
