"""`doit builder`: the builder image, made from Debian packages into an OCI archive.

As a base is made (tasks/stages/base.py): debootstrap of inputs.RELEASE for
the host's architecture in the build's sandbox, through the package cache,
then install.sh, then the tree settled (its times at most the archive's,
nothing of the build host's) and archived as one layer. The archive is
named by the inputs' digest; `podman load -i` gives the image of that name
(tools/in-builder does so), `skopeo copy oci-archive:...` pushes it.
"""

from __future__ import annotations

import os
import shutil
import ssl
from pathlib import Path

from tasks.builder import inputs, oci
from tasks.errors import StageFailed, log_tail
from tasks.model.arch import Arch
from tasks.model.plan import Plan
from tasks.progress import StageProgress
from tasks.stages import base
from tasks.system import atomic, cpu, hostenv, proc, sandbox

INSTALL_SCRIPT = Path(__file__).with_name("install.sh")
VENV = "/opt/images/venv"  # install.sh makes it; the image's PATH starts there
ENV = {
    "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "VIRTUAL_ENV": VENV,
    "LANG": "C.UTF-8",
}


class BuilderFailed(StageFailed):
    pass


def build(plan: Plan, target: Path) -> None:
    """Make the builder image's archive, target (inputs.archive)."""
    from tasks.stages import aptlists  # with requests: imported by the builds only, not by the task graph
    from tasks.system import aptcache  # an HTTP server: likewise

    if os.geteuid() != 0:
        raise BuilderFailed("making the builder image needs root (in a container, rootful podman's will do)")
    if not shutil.which("debootstrap"):
        raise BuilderFailed("debootstrap not found: install the Debian package debootstrap (tools/setup-host doit)")
    settings = plan.matrix.build
    arch = Arch.of_host().spec.debian
    staging = target.parent / f".{target.name}.build"
    root, given = staging / "root", staging / "inputs"
    log = target.with_name(target.name.removesuffix(".oci.tar") + ".log")
    atomic.remove(staging)
    given.mkdir(parents=True)
    (given / "requirements.txt").write_text("\n".join(inputs.requirements(plan.root)) + "\n")
    shutil.copytree(plan.root / "tools" / "npm", given / "npm")
    partial_log = staging / "builder.log"
    debootstrap = [
        "debootstrap",
        *base.DEBOOTSTRAP_OPTIONS,
        f"--arch={arch}",
        inputs.RELEASE,
        str(root),
        settings.mirror,
    ]
    partial_log.write_text(f"# {' '.join(debootstrap)}\n")
    env = {
        **hostenv.passed(),
        "BUILDER_PACKAGES": " ".join(inputs.packages(plan.root)),
        "BUILDER_PURGE": " ".join(inputs.BUILD_ONLY),
    }
    host_ca = ssl.get_default_verify_paths().cafile
    if host_ca and Path(host_ca).is_file():
        env["BUILDER_HOST_CA"] = host_ca  # pip's and npm's registries, as the host reaches them
    try:
        with StageProgress("builder image", unit="steps") as progress:

            def on_line(line: str) -> None:
                if line.startswith("I: "):
                    progress.update(status=line[3:].split(" ", 1)[0].rstrip("."))

            def step(command: list[str]) -> None:
                keep = [staging, INSTALL_SCRIPT.parent, base.DEBOOTSTRAP_SCRIPT.parent]
                status = sandbox.run_logged(command, partial_log, env, keep=keep, on_line=on_line)
                if status != 0:
                    atomic.commit(partial_log, log)
                    raise BuilderFailed(
                        f"making the builder image failed ({status}); full log: {log}\n{log_tail(log)}", log=log
                    )

            with cpu.slots(plan.cpu_slots, want=1), aptcache.PackageCache(base.package_cache(plan.workdir)) as cache:
                if settings.mirror.startswith("http://"):
                    env["http_proxy"] = cache.url  # debootstrap and apt fetch through the package cache
                step(["bash", str(base.DEBOOTSTRAP_SCRIPT), str(root), *debootstrap])
                step(["bash", str(INSTALL_SCRIPT), str(root), str(given), *_sources(plan)])
            progress.update(status="Archiving")
            lists = root / "var/lib/apt/lists"
            try:
                epoch = aptlists.archive_time(lists)
            except ValueError as error:
                raise BuilderFailed(f"making the builder image: {error}") from None
            atomic.remove(lists)
            lists.mkdir()
            (root / "etc/resolv.conf").unlink(missing_ok=True)  # the build host's; a container gets its own
            base.settle(root, epoch)
            layer = staging / "layer.tar"
            proc.run(base.tar_command(root, layer, epoch, compress=False))
            atomic.remove(root)
            name = inputs.tag(plan.root)
            digest = oci.write(
                layer,
                target,
                ref=name,
                arch=arch,
                epoch=epoch,
                env=ENV,
                labels={"org.opencontainers.image.title": "images-builder", "inputs": name.rpartition(":")[2]},
            )
        with open(partial_log, "a") as out:
            out.write(f"# {name}: manifest {digest}\n")
        atomic.commit(partial_log, log)
        for other in target.parent.glob("images-builder-*"):
            if other.name not in (target.name, log.name):
                atomic.remove(other)  # an image of other inputs: never used again here
    finally:
        atomic.remove(staging)  # the sandbox, and every mount in it, is gone


def _sources(plan: Plan) -> tuple[str, ...]:
    """The release's suites, as its images' builds use them (tasks/stages/base.py)."""
    release = plan.matrix.releases.get(inputs.RELEASE)
    if release is None:
        return (f"deb {plan.matrix.build.mirror} {inputs.RELEASE} main",)
    return base.build_sources(plan.config_space, release, plan.matrix.build)
