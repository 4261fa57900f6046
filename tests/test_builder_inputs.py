"""The builder image's name and archive: what makes it again, and the OCI archive podman loads."""

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import IO

import pytest

from tasks.builder import inputs, oci
from tasks.commands import builder as builder_command

from .conftest import needs_mounts


def _member(archive: tarfile.TarFile, name: str | tarfile.TarInfo) -> IO[bytes]:
    found = archive.extractfile(name)
    assert found is not None, f"{name} is no file of the archive"
    return found


REPO = Path(__file__).resolve().parent.parent


def copy_of_inputs(tmp_path: Path) -> Path:
    for name in inputs.FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("name", inputs.FILES)
def test_each_input_names_the_image_and_nothing_else_does(tmp_path, name):
    repo = copy_of_inputs(tmp_path)
    before = inputs.digest(repo)
    assert before == inputs.digest(REPO), "the same files, the same name, wherever the checkout is"
    (repo / "README.md").write_text("not an input\n")
    assert inputs.digest(repo) == before
    with open(repo / name, "a") as f:
        f.write("\n")
    assert inputs.digest(repo) != before
    assert inputs.archive(tmp_path / "build", repo).name == f"images-builder-{inputs.digest(repo)}.oci.tar"


def test_the_command_line_gives_what_tools_in_builder_reads():
    def ask(*args):
        return subprocess.run(
            ["python3", "-P", str(REPO / "tasks/builder/inputs.py"), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert ask("tag") == inputs.tag() == f"{inputs.NAME}:{inputs.digest()}"
    assert ask("archive", "build") == str(inputs.archive(Path("build").resolve()))
    assert ask("requirements").splitlines() == inputs.requirements()


def test_packages_are_read_by_role(tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools/packages").write_text(
        "# a comment\nbuild a b  # why\n\ntest c\nbuild d a\nnode e\n  # indented comment\n"
    )
    assert inputs.packages(tmp_path, ("build",)) == ["a", "b", "d"]
    assert inputs.packages(tmp_path) == ["a", "b", "c", "d", "e"]
    assert {"fai-client", "qemu-system-x86", "nodejs"} <= set(inputs.packages())


def layer(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hello").write_text("hello\n")
    tar = tmp_path / "layer.tar"
    subprocess.run(
        ["tar", "--create", "--sort=name", "--mtime=@0", "--numeric-owner", "-C", str(tree), "-f", str(tar), "."],
        check=True,
    )
    return tar


def test_an_oci_archive_is_the_same_bytes_for_the_same_layer(tmp_path):
    tar = layer(tmp_path)
    digests = [
        oci.write(tar, tmp_path / f"{n}.oci.tar", "localhost/t:1", "amd64", 1700000000, {"PATH": "/bin"}, {})
        for n in (1, 2)
    ]
    assert digests[0] == digests[1]
    assert (tmp_path / "1.oci.tar").read_bytes() == (tmp_path / "2.oci.tar").read_bytes()
    with tarfile.open(tmp_path / "1.oci.tar") as archive:
        index = json.load(_member(archive, "index.json"))
        manifest_member = "blobs/sha256/" + digests[0].removeprefix("sha256:")
        manifest_bytes = _member(archive, manifest_member).read()
        assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == digests[0]
        manifest = json.loads(manifest_bytes)
        config = json.load(_member(archive, "blobs/sha256/" + manifest["config"]["digest"][7:]))
    assert index["manifests"][0]["annotations"] == {oci.REF_NAME: "localhost/t:1"}
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()]
    assert config["config"]["Env"] == ["PATH=/bin"] and config["created"] == "2023-11-14T22:13:20Z"


@needs_mounts  # podman's storage
@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is installed by tools/setup-host")
def test_podman_loads_the_archive_by_its_name_and_digest(tmp_path):
    name = f"localhost/images-builder-test:{tmp_path.name[-12:].lower()}"
    digest = oci.write(layer(tmp_path), tmp_path / "t.oci.tar", name, "amd64", 1700000000, {"PATH": "/bin"}, {})
    try:
        subprocess.run(["podman", "load", "--quiet", "--input", str(tmp_path / "t.oci.tar")], check=True)
        shown = subprocess.run(
            ["podman", "image", "inspect", name, "--format", "{{.Digest}}"], capture_output=True, text=True, check=True
        )
        assert shown.stdout.strip() == digest
    finally:
        subprocess.run(["podman", "rmi", "--force", name], capture_output=True)


def test_a_copy_of_the_project_without_the_inputs_loads_and_says_what_is_missing(tmp_path):
    import dataclasses

    from tasks import ci
    from tasks.model import plan as plan_module

    plan = plan_module.from_options(REPO, {"workdir": str(tmp_path / "build")}.get)
    copy = dataclasses.replace(plan, root=tmp_path)  # dodo.py, tasks and the matrix only
    task = builder_command.tasks(copy)
    action, args = task["actions"][0]
    message = action(*args).message  # doit's TaskFailed: the task fails with this one line
    assert message.startswith("the builder's inputs cannot be read: ") and "tools/packages" in message
    with pytest.raises(ci.CiFailed, match="or give builder="):
        ci.builder_image(copy)
    pinned = "registry.example.org/b@sha256:" + "0" * 64
    assert ci.builder_image(dataclasses.replace(copy, builder=pinned)) == pinned
