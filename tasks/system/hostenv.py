"""The environment an image's build runs in: what it needs of ours, never our credentials.

The base and the build run Debian's maintainer scripts and FAI's config space
as root in a chroot. One doit run may also publish (the storage's and the
signing key's variables) or run in a CI job (its tokens); none of that may
reach them. So they get an allowlist of this process's environment (the
programs' path, the terminal, the time zone, proxies where the host needs
one), and the variables the stage sets itself. The image checks refuse a
build whose chroot sees a variable named like a credential
(tasks/stages/imagecheck.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

# What a build takes of the caller's environment.
PASSED = (
    "PATH",
    "HOME",
    "TERM",
    "TZ",
    # Where the host reaches the network only through a proxy (the package cache does not cover https mirrors).
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)
_CREDENTIAL = re.compile(
    r"TOKEN|SECRET|PASSW(OR)?D|CREDENTIAL|PRIVATE|_KEY$|_KEY_|^AWS_|^AZURE_|^GOOGLE_|^IMAGES_(SIGNING|STORAGE)_|^SSH_AUTH",
    re.IGNORECASE,
)


def passed(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The part of env (this process's by default) a build gets."""
    env = os.environ if env is None else env
    return {name: env[name] for name in PASSED if name in env}


def credentials(env: Mapping[str, str]) -> list[str]:
    """The names in env that look like a credential's."""
    return sorted(name for name in env if _CREDENTIAL.search(name))
