"""A doit run that starts with the test session, for a test that runs last.

The arm64 end-to-end run (tests/test_arm64.py) keeps about one core busy with
emulation for a quarter of CI's time. Run in its turn, it would leave the other
core idle all that while; started with the session (tests/conftest.py: a test
module's BACKGROUND_RUN), it shares the machine with the quick suite and the
amd64 end-to-end tests, and its test, moved to the end, waits for it and checks
what it made. Its work directory is its own (CPU slots included), so its
builds and boots are the same as in a run of their own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import unprivileged
from .unprivileged import HostWatch

REPO = Path(__file__).resolve().parent.parent


class BackgroundRun:
    """unprivileged: run as a CI job without privileges (tools/unprivileged), the host watched meanwhile."""

    def __init__(self, name: str, targets: list[str], unprivileged: bool = False) -> None:
        self.name = name
        self.targets = targets
        self.unprivileged = unprivileged
        self.dir: Path | None = None
        self.process: subprocess.Popen | None = None
        self.watch: HostWatch | None = None

    @property
    def workdir(self) -> Path:
        assert self.dir, f"{self.name}: not started"
        return self.dir / "build"

    @property
    def log(self) -> Path:
        assert self.dir, f"{self.name}: not started"
        return self.dir / "doit.log"

    def start(self) -> None:
        if self.process or os.geteuid() != 0:  # image builds need root: the test skips itself
            return
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}.", dir="/var/tmp"))
        argv = [
            sys.executable,
            "-m",
            "doit",
            "-f",
            str(REPO / "dodo.py"),
            *self.targets,
            f"workdir={self.workdir}",
            f"storage={self.dir / 'storage'}",
        ]
        env = dict(os.environ)
        if self.unprivileged:
            argv, container_env = unprivileged.command(argv, volumes=[self.dir])
            env.update(container_env)
            self.watch = HostWatch([self.dir]).__enter__()
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO
            )

    def wait(self, timeout: float) -> tuple[int, str]:
        """The run's exit status and output, once it has ended (started now if it was not)."""
        self.start()
        assert self.process, f"{self.name}: not started"
        self.process.wait(timeout=timeout)
        if self.watch:
            self.watch.__exit__(None, None, None)
        return self.process.returncode, self.log.read_text(errors="replace")

    def stop(self, keep: bool) -> None:
        """End the run (doit cleans up on SIGTERM) and remove its files unless keep."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=180)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.dir and not keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.dir:
            print(f"\n{self.name}: its files are kept in {self.dir}")
