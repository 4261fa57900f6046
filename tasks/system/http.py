"""HTTP sessions whose credentials never leave the origin they were given for.

requests drops `Authorization` when a redirect leads to another host, but keeps
every other header: GitLab's `PRIVATE-TOKEN` and `JOB-TOKEN` would follow an
artifact download's redirect to object storage or a CDN, as GitLab documents
such downloads may redirect. A `Session` of this module follows every redirect
(the download still works) and drops each credential header whenever the
next URL's origin (scheme, host, port) is not the one the request started at.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import requests

# Headers that carry a secret, by the services the project talks to.
CREDENTIAL_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie", "PRIVATE-TOKEN", "JOB-TOKEN")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


class Session(requests.Session):
    """A requests session that keeps its credentials to the first origin of each request."""

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        first = response.history[0].request.url if response.history else response.request.url
        super().rebuild_auth(prepared_request, response)
        if first and prepared_request.url and origin(prepared_request.url) != origin(first):
            for name in CREDENTIAL_HEADERS:
                prepared_request.headers.pop(name, None)


def request(method: str, url: str, **kwargs) -> requests.Response:
    """One request, as requests.request, through such a session."""
    with Session() as session:
        return session.request(method, url, **kwargs)
