"""Only stale artifacts rebuild: which tasks a run would execute after an edit, on the real graph.

A work directory is made as a finished run leaves it, without building
(tests/finished.py: the base's package lists are the mirror's, what it shares
is what the host's apt resolves from them). Then one file is edited, and
tasks/stale.py (doit's own up-to-date checks, carried downstream) says what a
run of the full tier would execute.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml

from tasks import graph, registry, stale
from tasks.model import plan

from . import finished

REPO = Path(__file__).resolve().parent.parent
CHAIN = [stage.name for stage in registry.cell_chain()]
BASE = "base:bookworm-amd64"


def chain(*vendors: str) -> set[str]:
    return {f"{stage}:bookworm-{vendor}-amd64" for stage in CHAIN for vendor in vendors}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The fixture matrix's bookworm amd64 cells (every vendor) over a copy of the config space,
    as a finished run leaves them; yields a function that names what a run would execute."""
    top = tmp_path_factory.mktemp("staleness")
    space = top / "fai_config"
    shutil.copytree(REPO / "fai_config", space)
    matrix = yaml.safe_load((REPO / "tests/data/matrix.yaml").read_text())
    matrix["releases"] = {"bookworm": matrix["releases"]["bookworm"]}
    matrix["architectures"] = {"amd64": matrix["architectures"]["amd64"]}
    matrix["known_failures"] = []
    matrix["ci"]["build_tags"] = {"amd64": matrix["ci"]["build_tags"]["amd64"]}
    (top / "matrix.yaml").write_text(yaml.safe_dump(matrix))

    def the_plan() -> plan.Plan:
        options = {
            "workdir": str(top / "build"),
            "matrix": str(top / "matrix.yaml"),
            "storage": str(top / "storage"),
            "tier": "full",
        }
        made = plan.from_options(REPO, options.get, options)
        return dataclasses.replace(made, config_space=space)

    finished.finish(the_plan(), top / "bases")

    def would_run() -> set[str]:
        current = the_plan()
        tasks = graph.load_tasks(current)
        return stale.would_run(tasks, current.workdir / ".doit.db", CHAIN)

    return top, would_run


def edited(path: Path, addition: str):
    """A context in which the file has one more line."""

    class Edit:
        def __enter__(self):
            self.before = path.read_text()
            path.write_text(self.before + addition)

        def __exit__(self, *exc):
            path.write_text(self.before)

    return Edit()


def test_a_finished_run_leaves_nothing_to_do(workspace):
    _, would_run = workspace
    assert would_run() == set()


def test_one_vendors_package_rebuilds_that_vendor_only(workspace):
    """The base stays: apt says the package changes nothing all the images share."""
    top, would_run = workspace
    with edited(top / "fai_config/package_config/EC2", "jq\n"):
        assert would_run() == chain("ec2")
    assert would_run() == set(), "the package removed again: nothing to do"


def test_a_package_every_image_gets_rebuilds_the_base_and_every_image(workspace):
    top, would_run = workspace
    with edited(top / "fai_config/package_config/DEBIAN", "PACKAGES install\njq\n"):
        assert would_run() == {BASE} | chain("generic", "genericcloud", "nocloud", "ec2", "azure", "gce")
    assert would_run() == set()


def test_a_package_all_the_images_add_alike_rebuilds_the_base(workspace):
    """Every image has one of the two time daemons: what they share grows."""
    top, would_run = workspace
    with edited(top / "fai_config/package_config/TIME_SYSTEMD", "jq\n"):
        with edited(top / "fai_config/package_config/TIME_CHRONY", "jq\n"):
            assert would_run() == {BASE} | chain("generic", "genericcloud", "nocloud", "ec2", "azure", "gce")


def test_one_vendors_matrix_entry_rebuilds_that_vendor_only(workspace):
    top, would_run = workspace
    matrix = top / "matrix.yaml"
    before = matrix.read_text()
    data = yaml.safe_load(before)
    data["vendors"]["azure"]["disk_size"] = "31G"
    matrix.write_text(yaml.safe_dump(data))
    try:
        assert would_run() == chain("azure")
    finally:
        matrix.write_text(before)


def test_one_class_file_rebuilds_that_class_images_only(workspace):
    top, would_run = workspace
    with edited(top / "fai_config/files/etc/cloud/cloud.cfg.d/01_debian_cloud.cfg/EC2", "# edited\n"):
        assert would_run() == chain("ec2")


def test_a_file_every_image_reads_rebuilds_every_image_not_the_base(workspace):
    top, would_run = workspace
    with edited(top / "fai_config/scripts/DEBIAN/15-system", "# edited\n"):
        assert would_run() == chain("generic", "genericcloud", "nocloud", "ec2", "azure", "gce")
