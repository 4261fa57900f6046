"""What the release project asks GitLab's REST API (v4) about a build.

A pipeline and the protection of its ref, the jobs of a pipeline, and a job's
artifacts archive, as GitLab documents them (api/pipelines.md, api/jobs.md,
api/branches.md, api/tags.md, api/job_artifacts.md). Each answer GitLab can
refuse with becomes one line that says what to do.
"""

from __future__ import annotations

import contextlib
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import requests

from tasks.errors import StageFailed
from tasks.system import http

API_TOKEN_ENV = "IMAGES_BUILD_API_TOKEN"  # a build project access token (read_api), the release project's variable


class GitLabRefused(StageFailed):
    pass


class GitLab:
    def __init__(self, api_url: str, headers: dict[str, str], timeout: float = 60):
        self.api_url = api_url.rstrip("/")
        self.session = http.Session()  # the token stays with GitLab when a download redirects
        self.session.headers.update(headers)
        self.timeout = timeout

    @classmethod
    def from_environment(cls, api_url: str, env) -> GitLab:
        """api_url: the one matrix.yaml names (tasks/release/project.py); the token: the release project's variable.

        Not the job token: GitLab takes it on a short list of endpoints only, and a pipeline
        itself or a single branch is not on it (the admission needs both)."""
        if env.get(API_TOKEN_ENV):
            return cls(api_url, {"PRIVATE-TOKEN": env[API_TOKEN_ENV]})
        raise GitLabRefused(
            f"no token to read the build project with: set {API_TOKEN_ENV} (a project access token of the build "
            f"project, role Reporter, scope read_api) in the release project's CI/CD variables; GitLab's job token "
            f"cannot read a pipeline"
        )

    def _get(self, path: str, what: str, **kwargs) -> requests.Response:
        url = f"{self.api_url}{path}"
        try:
            answer = self.session.get(url, timeout=self.timeout, **kwargs)
        except requests.RequestException as error:
            raise GitLabRefused(f"{what}: {url}: {error}") from None
        if answer.status_code in (401, 403):
            raise GitLabRefused(
                f"{what}: GitLab refused the token (HTTP {answer.status_code}): {API_TOKEN_ENV} needs read_api on "
                f"the build project, and must not have expired"
            )
        if answer.status_code >= 400 and answer.status_code != 404:
            raise GitLabRefused(f"{what}: HTTP {answer.status_code} {answer.text[:200]}")
        return answer

    @staticmethod
    def project_path(project: str) -> str:
        return quote(project, safe="")

    def pipeline(self, project: str, pipeline_id: str) -> dict:
        what = f"pipeline {pipeline_id} of {project}"
        answer = self._get(f"/projects/{self.project_path(project)}/pipelines/{pipeline_id}", what)
        if answer.status_code == 404:
            raise GitLabRefused(f"{what}: no such pipeline (or the token may not read it)")
        return answer.json()

    def ref_is_protected(self, project: str, ref: str, tag: bool) -> bool:
        kind = "tags" if tag else "branches"
        answer = self._get(
            f"/projects/{self.project_path(project)}/repository/{kind}/{quote(ref, safe='')}", f"{kind[:-1]} {ref}"
        )
        return answer.status_code == 200 and answer.json().get("protected") is True

    def child_pipeline(self, project: str, pipeline_id: str) -> str:
        """The pipeline the build pipeline's trigger job generated (the images, one job per cell)."""
        what = f"the child pipeline of pipeline {pipeline_id} of {project}"
        answer = self._get(f"/projects/{self.project_path(project)}/pipelines/{pipeline_id}/bridges", what)
        if answer.status_code == 404:
            raise GitLabRefused(f"{what}: no such pipeline (or the token may not read it)")
        children = [
            bridge["downstream_pipeline"]
            for bridge in answer.json()
            if (bridge.get("downstream_pipeline") or {}).get("project_id")
            == (bridge.get("pipeline") or {}).get("project_id")
        ]
        if len(children) != 1:
            raise GitLabRefused(f"{what}: expected one child pipeline, found {len(children)}")
        return str(children[0]["id"])

    def jobs(self, project: str, pipeline_id: str) -> list[dict]:
        """Every job of the pipeline (all pages)."""
        found: list[dict] = []
        page = "1"
        while page:
            answer = self._get(
                f"/projects/{self.project_path(project)}/pipelines/{pipeline_id}/jobs",
                f"the jobs of pipeline {pipeline_id}",
                params={"per_page": 100, "page": page},
            )
            if answer.status_code == 404:
                raise GitLabRefused(f"the jobs of pipeline {pipeline_id} of {project}: no such pipeline")
            found += answer.json()
            page = answer.headers.get("X-Next-Page", "")
        return found

    @contextlib.contextmanager
    def artifacts(self, project: str, job: dict) -> Iterator[Path]:
        """The job's artifacts archive, downloaded to a temporary file (removed after)."""
        what = f"the artifacts of {job['name']} (job {job['id']})"
        answer = self._get(f"/projects/{self.project_path(project)}/jobs/{job['id']}/artifacts", what, stream=True)
        if answer.status_code == 404:
            expiry = job.get("artifacts_expire_at")
            if expiry and datetime.fromisoformat(expiry.replace("Z", "+00:00")) <= datetime.now(UTC):
                raise GitLabRefused(f"{what}: they expired at {expiry}; build the cells again")
            raise GitLabRefused(f"{what}: GitLab has none (never kept, or deleted)")
        with tempfile.NamedTemporaryFile(prefix="artifacts-", suffix=".zip") as archive:
            for chunk in answer.iter_content(4 << 20):
                archive.write(chunk)
            archive.flush()
            yield Path(archive.name)


def extract(archive: Path, under: str, target: Path, only: tuple[str, ...] = ()) -> list[Path]:
    """Unpack the members under `under`/ (a path inside the build checkout) into target; nothing else
    (and, given `only`, just the members of those names).

    Refuses members that would land outside target (absolute paths, ..)."""
    written = []
    prefix = PurePosixPath(under)
    try:
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.infolist():
                path = PurePosixPath(member.filename)
                if member.is_dir() or prefix not in path.parents:
                    continue
                relative = path.relative_to(prefix)
                if only and str(relative) not in only:
                    continue
                if path.is_absolute() or ".." in path.parts:
                    raise GitLabRefused(f"{archive.name}: {member.filename} points outside the work directory")
                destination = target / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                partial = destination.with_name(destination.name + ".fetching")
                with zipped.open(member) as source, open(partial, "wb") as sink:
                    while chunk := source.read(4 << 20):
                        sink.write(chunk)
                partial.replace(destination)
                written.append(destination)
    except zipfile.BadZipFile:
        raise GitLabRefused(f"{archive.name}: not a zip archive (GitLab's artifacts are)") from None
    return written
