"""A local HTTP server answering the part of GitLab's REST API (v4) the release project reads.

GitLab itself cannot run here. This server answers as GitLab documents
(api/pipelines.md, api/jobs.md, api/branches.md, api/tags.md,
api/job_artifacts.md): a pipeline, its jobs (paginated with X-Next-Page),
a branch's or tag's protection, a job's artifacts archive (a zip whose paths
are the build checkout's), 401 without an accepted PRIVATE-TOKEN or JOB-TOKEN,
404 for what does not exist or has expired. It records the requests it got.
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
    pipelines: dict[int, dict] = field(default_factory=dict)  # id -> {ref, sha, tag, status}
    branches: dict[str, bool] = field(default_factory=dict)  # name -> protected
    tags: dict[str, bool] = field(default_factory=dict)
    jobs: dict[int, list[dict]] = field(default_factory=dict)  # pipeline id -> jobs
    artifacts: dict[int, bytes | None] = field(default_factory=dict)  # job id -> zip; None: expired


class GitLabApi:
    def __init__(self, tokens: tuple[str, ...] = ("build-token",), per_page_limit: int = 100):
        self.projects: dict[str, Project] = {}
        self.tokens = tokens
        self.per_page_limit = per_page_limit
        self.requests: list[tuple[str, str]] = []  # (path, auth header name)
        self.port = servers.free_port()
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
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

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
        if not auth or handler.headers[auth] not in self.tokens:
            return self._json(handler, 401, {"message": "401 Unauthorized"})
        parts = url.path.removeprefix("/api/v4/").split("/")
        if len(parts) < 3 or parts[0] != "projects":
            return self._json(handler, 404, {"message": "404 Not Found"})
        project = self.projects.get(unquote(parts[1]))
        if project is None:
            return self._json(handler, 404, {"message": "404 Project Not Found"})
        rest = parts[2:]
        query = parse_qs(url.query)
        if rest[0] == "pipelines" and len(rest) == 2 and int(rest[1]) in project.pipelines:
            return self._json(handler, 200, {"id": int(rest[1]), **project.pipelines[int(rest[1])]})
        if rest[0] == "pipelines" and len(rest) == 3 and rest[2] == "jobs" and int(rest[1]) in project.jobs:
            jobs = project.jobs[int(rest[1])]
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
            archive = project.artifacts.get(int(rest[1]))
            if archive is not None:
                return self._send(handler, 200, archive, "application/zip")
        return self._json(handler, 404, {"message": "404 Not Found"})
