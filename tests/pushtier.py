"""The push tier built end to end, once per test session: the runs the end-to-end tests read
(tests/test_end_to_end.py), and the host's builds the builder image's are compared with
(tests/test_builder.py). The conftest's push_tier_runs fixture makes them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tasks import registry

from . import unprivileged

REPO = Path(__file__).resolve().parent.parent
CELLS = ["bookworm-genericcloud-amd64", "bookworm-nocloud-amd64"]
STAGES = tuple(stage.name for stage in registry.cell_chain())
# A CI pipeline's form of version (date and serial): its time is the base's, not the serial's.
VERSION = "20261201-1"


# A cell whose build fails for real (the disk layout needs more than 64 MiB), built in a
# run beside genericcloud: the run goes on without it.
FAILING = "bookworm-tiny-amd64"


def copy_of_repo(base: Path) -> Path:
    copy = base / "repo"
    copy.mkdir()
    for name in ("dodo.py", "matrix.yaml"):
        shutil.copy2(REPO / name, copy / name)
    for name in ("tasks", "fai_config"):
        shutil.copytree(REPO / name, copy / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    # Added as text: other tests edit the matrix's own lines.
    matrix = copy / "matrix.yaml"
    text = matrix.read_text()
    text = text.replace(
        "\nvendors:\n",
        "\nvendors:\n  tiny:\n    fai_classes: [NOCLOUD, LINUX_GENERIC, TIME_SYSTEMD]\n"
        "    disk_size: 64M\n    formats: [tar.xz]\n",
        1,
    )
    text = text.replace(
        "\ntiers:\n",
        "\ntiers:\n  mixed:\n    - releases: [bookworm]\n"
        "      vendors: [genericcloud, tiny]\n      architectures: [amd64]\n",
        1,
    )
    # A vendor whose tree breaks an in-build check: a user with a login shell.
    text = text.replace(
        "\nvendors:\n",
        "\nvendors:\n  stray:\n    fai_classes: [NOCLOUD, LINUX_GENERIC, TIME_SYSTEMD, STRAY]\n"
        "    disk_size: 3G\n    formats: [tar.xz]\n",
        1,
    )
    stray = copy / "fai_config" / "scripts" / "STRAY" / "10-user"
    stray.parent.mkdir()
    stray.write_text("#! /bin/bash\n$ROOTCMD useradd --uid 1000 --shell /bin/bash --create-home tester\n")
    stray.chmod(0o755)
    matrix.write_text(text)
    assert {"tiny", "genericcloud"} <= set(yaml.safe_load(text)["vendors"]) and "mixed" in yaml.safe_load(text)["tiers"]
    return copy


# The publishing key of the end-to-end runs: dailies and the release are signed with it.
KEY: list = []
# Credentials these runs hold besides the key, as a CI job or a publishing host would: no build may see them.
CANARIES = {"IMAGES_STORAGE_PASSWORD": "canary-password", "CANARY_API_TOKEN": "canary-token"}


# Each doit run's watch on the host (tests/unprivileged.py).
WATCHES: list[unprivileged.HostWatch] = []


def doit(base: Path, *args, version: str = VERSION) -> subprocess.CompletedProcess:
    """doit as a CI job without privileges runs it: in a container without --privileged or
    devices (tools/unprivileged), while the host is watched for loop devices and mounts."""
    argv, container_env = unprivileged.command(
        [
            sys.executable,
            "-m",
            "doit",
            "-f",
            str(base / "repo" / "dodo.py"),
            *args,
            f"workdir={base / 'build'}",
            f"storage={base / 'storage'}",
            "xz_level=1",
            f"version={version}",
        ],
        volumes=[base],
    )
    env = {**os.environ, **(KEY[0].environment() if KEY else {}), **CANARIES, **container_env}
    with unprivileged.HostWatch([base]) as watch:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=3600, env=env)
    WATCHES.append(watch)
    print(result.stdout, result.stderr, sep="\n")
    return result


def executed(result) -> set[str]:
    return {line[3:].strip() for line in result.stdout.splitlines() if line.startswith(".  ")}


def up_to_date(result) -> set[str]:
    return {line[3:].strip() for line in result.stdout.splitlines() if line.startswith("-- ")}


def make_runs(base: Path, make_key) -> tuple:
    """Four runs in base: one target, a tier with a failing cell, the push tier, and again."""
    copy_of_repo(base)
    KEY[:] = [make_key(base / "key")]
    one_target = doit(base, "boottest:bookworm-nocloud-amd64")
    mixed = doit(base, "tier=mixed")  # genericcloud, and a cell whose build fails
    default = doit(base)  # two jobs: one per core
    again = doit(base)
    # What the cells were as first built: later tests edit the config space and build again.
    for cell in CELLS:
        if (base / "build" / cell / "facts.json").is_file():  # else the tests say what failed
            shutil.copy2(base / "build" / cell / "facts.json", facts_as_built(base, cell))
    return base, one_target, default, again, mixed


def facts_as_built(base: Path, cell: str) -> Path:
    return base / f"{cell}.facts.json"
