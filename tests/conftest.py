"""Shared fixtures: the repository's matrix, and a cell's work files made small."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.model import matrix
from tasks.model.layout import CellFiles
from tasks.stages import manifest, provenance
from tasks.system import signing, userns

REPO = Path(__file__).resolve().parent.parent

# The commands the tests run (doit, python3, gitlab-ci-local, azurite-blob) come from the environment
# they run in, first on PATH as in the builder image: CI jobs' scripts name them so.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


# Tests that mount, or run podman, themselves: root on a host may, a container's root (a CI job,
# tools/in-builder) may not (builds mount only in a user namespace of their own: tasks/system/userns.py).
needs_mounts = pytest.mark.skipif(
    not userns.privileged(),
    reason="mounts itself: root on a host, not a container's",
)

# The background runs this session started (tests/background.py).
_STARTED = pytest.StashKey[list]()


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what they leave out
def pytest_collection_modifyitems(config, items):
    """Tests that check a background run go last, their run started now."""
    waiting = [item for item in items if getattr(getattr(item, "module", None), "BACKGROUND_RUN", None)]
    if waiting and not config.option.collectonly:
        items[:] = [item for item in items if item not in waiting] + waiting
        runs = list({id(item.module.BACKGROUND_RUN): item.module.BACKGROUND_RUN for item in waiting}.values())
        for run in runs:
            run.start()
        config.stash[_STARTED] = runs


def pytest_sessionfinish(session, exitstatus):
    for run in session.config.stash.get(_STARTED, []):
        run.stop(keep=exitstatus != 0)


def run_doit(*args: str, timeout: float = 120, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """This project's doit, as a user runs it (its own process), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


# The unit tests' own matrix, kept apart from the project's matrix.yaml so that
# editing the project's matrix never changes what a unit test means.
FIXTURE_MATRIX = REPO / "tests" / "data" / "matrix.yaml"


@pytest.fixture(scope="session")
def benchmark():
    """tools/benchmark.py, a script rather than a module of the package."""
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "tools" / "benchmark.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def repo_matrix():
    """The project's own matrix.yaml: what the end-to-end tests build."""
    return matrix.load(REPO / "matrix.yaml")


@pytest.fixture(scope="session")
def pinned_tools(repo_matrix, tmp_path_factory) -> Path:
    """The builder's pinned disk tools (tasks/system/toolstree.py), unpacked once for the session."""
    from tasks.system import toolstree

    tree = toolstree.tree_dir(tmp_path_factory.mktemp("tools-workdir"))
    return toolstree.bin_dir(toolstree.ensure(tree, repo_matrix.build.mirror))


@pytest.fixture(scope="session")
def test_matrix_file() -> Path:
    return FIXTURE_MATRIX


@pytest.fixture(scope="session")
def test_matrix(test_matrix_file):
    """The unit tests' matrix."""
    return matrix.load(test_matrix_file)


# dpkg's status database of the fake image: its two packages.
DPKG_STATUS = """Package: base-files
Status: install ok installed
Architecture: amd64
Version: 12.4+deb12u8

Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b7
Source: bash (5.2.15-2)
"""


def fake_outputs(workdir: Path, cell, version: str = "20261125-1200") -> CellFiles:
    """What build, compress and boot test leave for a cell, as small real files."""
    files = CellFiles.of(workdir, cell)
    files.dir.mkdir(parents=True)
    with open(files.raw, "wb") as raw:  # a small sparse disk: data at its start, a hole after
        raw.write(os.urandom(4096))
        raw.truncate(1 << 20)
    for fmt in cell.vendor.formats:
        files.artifact(fmt).write_bytes(os.urandom(3000) + fmt.encode())
    files.packages.write_text("base-files\t12.4+deb12u8\tamd64\nbash\t5.2.15-2+b7\tamd64\n")
    files.facts.write_text(
        json.dumps({"schema": "image-facts/1", "packages": ["base-files", "bash"], "users": {"default_user": "debian"}})
    )
    files.build_info.write_text(
        json.dumps(
            {
                "cell": cell.name,
                "release": cell.release.name,
                "release_version": cell.release.version,
                "vendor": cell.vendor.name,
                "arch": cell.arch.name,
                "version": version,
                "image_name": cell.image_name(version),
                "fai_classes": list(cell.fai_classes),
                "disk_size": cell.vendor.disk_size,
                "build_started": "2026-11-25T12:00:00+00:00",
                "build_seconds": 90.0,
                "builder": {"id": "test", "fai": "6.0.3+deb12u1", "host_kernel": "6.1.0"},
                "mirror": "http://deb.debian.org/debian",
                "source_date_epoch": 1764072000,
                "settings": {"vendor": cell.vendor.name, "fai_classes": list(cell.fai_classes)},
                "inputs": {"project_commit": "0" * 40, "config_space_sha256": "1" * 64, "base_sha256": "2" * 64},
                "apt_releases": [
                    {"name": "deb.debian.org_debian_dists_bookworm_InRelease", "sha256": "3" * 64, "date": "Sat"}
                ],
                "build_finished": "2026-11-25T12:01:30+00:00",
                "record": "build-info/2",
            }
        )
    )
    files.dpkg_status.write_text(DPKG_STATUS)
    files.apt_releases.write_text("deb.debian.org_debian_dists_bookworm_InRelease\t" + "3" * 64 + "\tSat\n")
    with tarfile.open(files.changelogs, "w"):
        pass  # no changelog: what the changes stage reads when an image carries none
    for path in files.sboms:
        path.write_text(json.dumps({"sbom": path.name}))
    # What the provenance stage writes; the publish stage only wraps and uploads it.
    files.provenance.write_text(json.dumps({"_type": "https://in-toto.io/Statement/v1", "subject": []}))
    files.boot_result.write_text(
        json.dumps(
            {
                "cell": cell.name,
                "verdict": "passed",
                "passed": True,
                "boots": [
                    {
                        "firmware": firmware,
                        "verdict": "passed",
                        "accelerator": "tcg",
                        "seconds": 34.0,
                        "milestones": {"kernel": 9.0, "systemd": 17.0, "login": 34.0},
                        "until": "login",
                    }
                    for firmware in cell.arch.firmware
                ],
            }
        )
    )
    return files


@pytest.fixture
def nocloud(repo_matrix, tmp_path):
    """bookworm-nocloud-amd64's outputs, small and real, with their manifest."""
    cell = repo_matrix.cell("bookworm-nocloud-amd64")
    files = fake_outputs(tmp_path / "build", cell)
    manifest.write(cell, files)
    provenance.write(cell, files)
    return cell, files


@dataclass(frozen=True)
class KeyFiles:
    secret: Path  # the secret key's file, as IMAGES_SIGNING_KEY names it
    public: Path  # what a user verifies with
    fingerprint: str

    def environment(self) -> dict[str, str]:
        return {signing.KEY_ENV: str(self.secret), signing.FINGERPRINT_ENV: self.fingerprint}


def make_key(directory: Path, name: str = "Test images", expire: str = "1d") -> KeyFiles:
    """A new OpenPGP signing key (ed25519, no passphrase), exported to files."""
    directory.mkdir(parents=True, exist_ok=True)
    with signing.gnupg_home() as home:
        gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet", "--passphrase", ""]
        subprocess.run([*gpg, "--quick-gen-key", f"{name} <images@example.org>", "ed25519", "sign", expire], check=True)
        listing = subprocess.run([*gpg, "--with-colons", "--list-keys"], capture_output=True, text=True).stdout
        fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
        secret, public = directory / "secret.asc", directory / "public.asc"
        secret.write_bytes(
            subprocess.run([*gpg, "--armor", "--export-secret-keys", fingerprint], capture_output=True).stdout
        )
        public.write_bytes(subprocess.run([*gpg, "--armor", "--export", fingerprint], capture_output=True).stdout)
    return KeyFiles(secret, public, fingerprint)


@pytest.fixture(scope="session")
def test_key(tmp_path_factory) -> KeyFiles:
    return make_key(tmp_path_factory.mktemp("key"))


@pytest.fixture
def signing_env(test_key, monkeypatch) -> KeyFiles:
    """The test key configured as the publishing key."""
    for name, value in test_key.environment().items():
        monkeypatch.setenv(name, value)
    return test_key


# --------------------------------------------------------------------------
# AWS: moto's emulator on a real socket (tests/aws_emulator.py completes it)


@pytest.fixture(scope="session")
def aws():
    from . import aws_emulator, servers

    aws_emulator.install()
    server = servers.Moto().start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(aws, monkeypatch):
    """Each test starts with an empty AWS: the platform finds AMIs by name, so none may linger."""
    import requests

    from . import aws_emulator

    requests.post(f"{aws.endpoint}/moto-api/reset", timeout=10).raise_for_status()
    aws_emulator.IMPORT_TASKS.clear()
    for key, value in aws.env().items():
        monkeypatch.setenv(key, value)
    return aws


@pytest.fixture(scope="session")
def push_tier_runs(tmp_path_factory):
    """The push tier built end to end (tests/pushtier.py): once for every test that reads it."""
    from . import pushtier

    return pushtier.make_runs(tmp_path_factory.mktemp("e2e", numbered=True), make_key)


@pytest.fixture(scope="module")
def moto():
    """moto's AWS emulator on a real socket, one per test module."""
    from . import servers

    server = servers.Moto().start()
    yield server
    server.stop()


@pytest.fixture(params=["file", "webdav", "s3"])
def store(request, tmp_path, moto, monkeypatch):
    """Each storage in turn (tests/stores.py): a directory, WebDAV on nginx, S3 on moto."""
    import uuid

    from . import servers, stores

    if request.param == "file":
        yield stores.local_store(tmp_path)
    elif request.param == "webdav":
        nginx = servers.Nginx(tmp_path / "nginx").start()
        yield stores.dav_store(nginx)
        nginx.stop()
    else:
        yield stores.s3_store(moto, monkeypatch, bucket=f"images-{uuid.uuid4().hex[:12]}")
