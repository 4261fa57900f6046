"""A local HTTP server answering the part of GitLab's REST API (v4) the release project reads.

GitLab itself cannot run here. This server answers as GitLab documents
(api/pipelines.md, api/jobs.md, api/branches.md, api/tags.md,
api/job_artifacts.md, ci/jobs/ci_job_token.md) and as its source behaves:

- a pipeline; its trigger jobs (bridges) with their downstream pipelines; its
  jobs, paginated with X-Next-Page, a retried job's last attempt only unless
  include_retried=true; a branch's or tag's protection;
- a job's artifacts archive (a zip whose paths are the build checkout's), sent
  by a redirect to a second server on another address and port, the object
  storage, as GitLab may redirect a download to object storage or a CDN;
- the projects are private: without a token, or with a job token on an
  endpoint that does not take one (a pipeline, a branch), GitLab answers as to
  anyone, 404; a PRIVATE-TOKEN it does not know is 401; a job token is taken
  only for the jobs and artifacts endpoints, and there refused with 403 unless
  the project's job token allowlist holds the caller's project;
- 404 for what does not exist or has expired.

It records the requests it got, and the object storage the headers it got.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from . import servers


def zip_directory(root: Path, paths: list[Path]) -> bytes:
    """An artifacts archive as GitLab makes it: every file under paths, named relative to root."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in paths:
            for file in sorted([path] if path.is_file() else path.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(root).as_posix())
    return buffer.getvalue()


@dataclass
class Project:
    path: str
    id: int = 1
    pipelines: dict[int, dict] = field(default_factory=dict)  # id -> {ref, sha, tag, status, source}
    branches: dict[str, bool] = field(default_factory=dict)  # name -> protected
    tags: dict[str, bool] = field(default_factory=dict)
    jobs: dict[int, list[dict]] = field(default_factory=dict)  # pipeline id -> jobs ("retried": an earlier try)
    children: dict[int, int] = field(default_factory=dict)  # pipeline id -> the child pipeline its trigger job made
    artifacts: dict[int, bytes | None] = field(default_factory=dict)  # job id -> zip; None: expired


# The endpoints that take a job token, of those the release reads (ci/jobs/ci_job_token.md).
JOB_TOKEN_ENDPOINTS = ("jobs", "artifacts")


class GitLabApi:
    def __init__(
        self, tokens: tuple[str, ...] = ("build-token",), per_page_limit: int = 100, job_tokens: tuple[str, ...] = ()
    ):
        self.projects: dict[str, Project] = {}
        self.tokens = tokens
        self.job_tokens = job_tokens
        self.job_token_allowed = False  # the build project's allowlist names the caller's project
        self.per_page_limit = per_page_limit
        self.requests: list[tuple[str, str]] = []  # (path, auth header name)
        self.port = servers.free_port()
        # The object storage artifact downloads are redirected to: another address, another port.
        self.object_storage = servers.RecordingServer(self._stored, host="127.0.0.2")
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                api.handle(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v4"

    def project(self, path: str) -> Project:
        return self.projects.setdefault(path, Project(path))

    def start(self) -> GitLabApi:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        servers.wait_for_port(self.port)
        self.object_storage.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.object_storage.stop()

    def _stored(self, request, server) -> tuple[int, dict, bytes]:
        """The object storage: an artifacts archive by the signed path the redirect named."""
        path, _, query = request.path.partition("?")
        project, job = path.removeprefix("/artifacts/").split("/")
        archive = self.projects[unquote(project)].artifacts.get(int(job))
        if query != "X-Amz-Signature=signed" or archive is None:
            return 403, {}, b"AccessDenied"
        return 200, {"Content-Type": "application/zip"}, archive

    # ------------------------------------------------------------------
    def _send(self, handler, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    def _json(self, handler, status: int, data, headers: dict | None = None) -> None:
        self._send(handler, status, json.dumps(data).encode(), "application/json", headers)

    def handle(self, handler) -> None:
        url = urlsplit(handler.path)
        auth = next((h for h in ("PRIVATE-TOKEN", "JOB-TOKEN") if handler.headers.get(h)), "")
        self.requests.append((url.path, auth))
        parts = url.path.removeprefix("/api/v4/").split("/")
        endpoint = parts[-1] if parts[-1] in JOB_TOKEN_ENDPOINTS else ""
        if auth == "PRIVATE-TOKEN" and handler.headers[auth] not in self.tokens:
            return self._json(handler, 401, {"message": "401 Unauthorized"})
        if auth == "JOB-TOKEN" and endpoint and handler.headers[auth] not in self.job_tokens:
            return self._json(handler, 401, {"message": "401 Unauthorized"})
        if auth == "JOB-TOKEN" and endpoint and not self.job_token_allowed:
            message = "Authentication by CI/CD job token not allowed from release project to build project."
            return self._json(handler, 403, {"message": f"403 Forbidden - {message}"})
        anonymous = not auth or (auth == "JOB-TOKEN" and not endpoint)  # a job token elsewhere: as anyone
        if len(parts) < 3 or parts[0] != "projects":
            return self._json(handler, 404, {"message": "404 Not Found"})
        project = self.projects.get(unquote(parts[1]))
        if project is None or anonymous:  # private projects do not exist for anyone
            return self._json(handler, 404, {"message": "404 Project Not Found"})
        rest = parts[2:]
        query = parse_qs(url.query)
        if rest[0] == "pipelines" and len(rest) == 2 and int(rest[1]) in project.pipelines:
            return self._json(handler, 200, {"id": int(rest[1]), **project.pipelines[int(rest[1])]})
        if rest[0] == "pipelines" and len(rest) == 3 and rest[2] == "bridges" and int(rest[1]) in project.pipelines:
            child = project.children.get(int(rest[1]))
            bridges = [
                {
                    "id": 900 + int(rest[1]),
                    "name": "images",
                    "pipeline": {"id": int(rest[1]), "project_id": project.id},
                    "downstream_pipeline": {"id": child, "project_id": project.id} if child else None,
                }
            ]
            return self._json(handler, 200, bridges)
        if rest[0] == "pipelines" and len(rest) == 3 and rest[2] == "jobs" and int(rest[1]) in project.jobs:
            retried = query.get("include_retried", ["false"])[0] == "true"
            jobs = [
                {k: v for k, v in job.items() if k != "retried"}
                for job in project.jobs[int(rest[1])]
                if retried or not job.get("retried")
            ]
            per_page = min(int(query.get("per_page", ["20"])[0]), self.per_page_limit)
            page = int(query.get("page", ["1"])[0])
            chunk = jobs[(page - 1) * per_page : page * per_page]
            more = page * per_page < len(jobs)
            return self._json(handler, 200, chunk, {"X-Next-Page": str(page + 1) if more else ""})
        if rest[0] == "repository" and len(rest) == 3 and rest[1] in ("branches", "tags"):
            known = project.branches if rest[1] == "branches" else project.tags
            name = unquote(rest[2])
            if name in known:
                return self._json(handler, 200, {"name": name, "protected": known[name]})
        if rest[0] == "jobs" and len(rest) == 3 and rest[2] == "artifacts":
            if project.artifacts.get(int(rest[1])) is not None:
                where = f"{self.object_storage.url}/artifacts/{parts[1]}/{rest[1]}?X-Amz-Signature=signed"
                return self._send(handler, 302, b"", "text/plain", {"Location": where})
        return self._json(handler, 404, {"message": "404 Not Found"})
