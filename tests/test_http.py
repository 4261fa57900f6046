"""tasks/system/http.py: a credential never follows a redirect to another origin; the download still does.
Two local servers on two loopback addresses stand for GitLab and the object storage it redirects to."""

from __future__ import annotations

import pytest
import requests

from tasks.system import http

from . import servers

SECRETS = {"PRIVATE-TOKEN": "glpat-secret", "JOB-TOKEN": "job-secret", "Authorization": "Bearer secret"}


@pytest.fixture
def storage():
    """Another host (127.0.0.2) on another port: the object storage a download is sent to."""
    server = servers.RecordingServer(lambda request, server: (200, {}, b"the artifacts"), host="127.0.0.2").start()
    yield server
    server.stop()


@pytest.fixture
def gitlab(storage):
    """Answers every request with a redirect: /here to itself, anything else to the storage."""

    def answer(request, server):
        if request.path == "/same/place":
            return 200, {}, b"the artifacts"
        where = f"{server.url}/same/place" if request.path == "/here" else f"{storage.url}/bucket/object?signed"
        return 302, {"Location": where}, b""

    server = servers.RecordingServer(answer).start()
    yield server
    server.stop()


def test_credentials_stay_home_and_the_download_goes_on(gitlab, storage):
    with http.Session() as session:
        answer = session.get(f"{gitlab.url}/api/v4/projects/1/jobs/2/artifacts", headers=SECRETS, timeout=10)
    assert answer.status_code == 200 and answer.content == b"the artifacts"
    assert {name: gitlab.requests[0].headers.get(name) for name in SECRETS} == SECRETS, "GitLab gets them"
    [downloaded] = storage.requests
    assert downloaded.path == "/bucket/object?signed"
    assert not set(SECRETS) & set(downloaded.headers), downloaded.headers


def test_a_redirect_within_the_origin_keeps_them(gitlab, storage):
    answer = http.request("GET", f"{gitlab.url}/here", headers=SECRETS, timeout=10)
    assert answer.content == b"the artifacts" and not storage.requests
    assert {name: gitlab.requests[-1].headers.get(name) for name in SECRETS} == SECRETS


def test_plain_requests_would_leak_the_token(gitlab, storage):
    """Why the project's own session exists: requests drops Authorization across hosts, not PRIVATE-TOKEN."""
    requests.get(f"{gitlab.url}/api/v4/projects/1/jobs/2/artifacts", headers=SECRETS, timeout=10)
    [downloaded] = storage.requests
    assert "Authorization" not in downloaded.headers
    assert downloaded.headers.get("PRIVATE-TOKEN") == "glpat-secret"


@pytest.mark.parametrize(
    "first, then, same",
    [
        ("http://h/a", "http://h:80/b", True),
        ("https://H/a", "https://h:443/b", True),
        ("http://h/a", "https://h/b", False),
        ("http://h:8080/a", "http://h:8081/b", False),
        ("http://h/a", "http://g/a", False),
    ],
)
def test_origins(first, then, same):
    assert (http.origin(first) == http.origin(then)) is same
