"""tasks/system/userns.py: a command in a user namespace of its own, ids 0-65535 mapped to
themselves, able to mount there and to give files to any of those ids."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.system import userns

from .conftest import needs_mounts

USERNS = Path(userns.__file__)
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mapping ids 0-65535 needs the host's root")


def in_userns(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-P", str(USERNS), "sh", "-c", script], capture_output=True, text=True, cwd=cwd
    )


def test_the_command_runs_in_its_own_namespace_with_every_system_id(tmp_path):
    done = in_userns(
        "readlink /proc/self/ns/user; cat /proc/self/uid_map /proc/self/gid_map;"
        " touch owned; chown 65534:100 owned; exit 7",
        tmp_path,
    )
    assert done.returncode == 7, done.stderr  # the command's own status
    namespace, uid_map, gid_map = done.stdout.splitlines()
    assert namespace != os.readlink("/proc/self/ns/user")
    assert uid_map.split() == gid_map.split() == ["0", "0", str(userns.IDS)]
    assert (os.stat(tmp_path / "owned").st_uid, os.stat(tmp_path / "owned").st_gid) == (65534, 100)


def test_mounts_made_in_it_stay_in_it(tmp_path):
    (tmp_path / "point").mkdir()
    done = in_userns(
        "unshare --mount --propagation private sh -c 'mount -t tmpfs inside point && touch point/file && ls point'",
        tmp_path,
    )
    assert done.returncode == 0 and done.stdout.split() == ["file"], done.stderr
    assert list((tmp_path / "point").iterdir()) == [], "the host never saw the tmpfs"


@needs_mounts
def test_privileged_reads_the_effective_capabilities():
    assert userns.privileged() is True  # root here, as the skip says
    done = subprocess.run(
        [sys.executable, "-c", "from tasks.system import userns; print(userns.privileged())"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        preexec_fn=lambda: os.setresuid(65534, 65534, 65534),
    )
    assert done.stdout.strip() == "False", done.stderr
