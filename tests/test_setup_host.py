"""tools/setup-host on the other Debian release than this host's: a plain system of it, as
debootstrap makes it (not the builder image), set up from nothing by the README's test command,
whose tests then pass there. On a Debian 12 host this tries Debian 13, and the other way round:
the host itself is the proof for its own release."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from . import plainsystem
from .test_ci import project_with

REPO = Path(__file__).resolve().parent.parent
RELEASES = {"bookworm": "trixie", "trixie": "bookworm"}  # this host's: the other one
# What runs there: the tests of what differs between the releases' packages and Pythons (the
# npm tools' native module, FAI, debootstrap and apt, binfmt_misc's entries, qemu and its
# firmware files, GnuPG, doit's output on Python 3.13). The whole quick suite runs
# there as well (`tools/in-builder pytest -m "not slow"` is Debian 13 too); CI's time is kept
# for these.
TESTS = [
    "tests/test_ci.py",
    "tests/test_base.py",
    "tests/test_fai_build.py",
    "tests/test_binfmt.py",
    "tests/test_boottest.py",
    "tests/test_signing.py",
    "tests/test_dodo.py",
    "tests/test_builder_inputs.py",
]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and containers need root"),
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is installed by tools/setup-host"),
]


@pytest.fixture
def plain_system(tmp_path):
    """A plain Debian system of the other release, imported into podman."""
    release = RELEASES.get(plainsystem.host_release())
    if release is None:
        pytest.skip(f"this host runs {plainsystem.host_release() or 'an unknown release'}, not Debian 12 or 13")
    name = f"localhost/plain-{release}:{tmp_path.name[-12:].lower()}"
    # A system thrown away after the test: dpkg need not sync each file setup-host's apt writes.
    plainsystem.make(release, tmp_path / "root", name, unsafe_io=True)
    yield release, name
    subprocess.run(["podman", "rmi", "--force", name], capture_output=True)


def test_setup_host_sets_up_the_other_release_and_its_tests_pass(plain_system, tmp_path):
    release, image = plain_system
    checkout = project_with(tmp_path, (REPO / ".gitlab-ci.yml").read_text(), "checkout")
    # The registries as this host reaches them: its certificate authorities, copied in.
    trust = plainsystem.registry_trust(checkout / ".host-ca.crt")
    command = ["env", *trust, "tools/setup-host", "pytest", "-m", "not slow", "-p", "no:cacheprovider", *TESTS]
    result = subprocess.run(
        [str(REPO / "tools" / "unprivileged"), *command],
        cwd=checkout,
        env={**os.environ, "UNPRIVILEGED_IMAGE": image},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    print(result.stdout[-8000:], result.stderr[-3000:])
    assert result.returncode == 0
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
    output = result.stdout + result.stderr
    assert "setup-host: installing the npm tools (tools/npm)" in output, "gitlab-ci-local and Azurite, from the lock"
