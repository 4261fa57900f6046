"""doit's state of each task, kept beside its targets as well as in doit's database.

doit knows a task is up to date from its database (<workdir>/.doit.db): the
state of each file it read, the values its up-to-date checks saved. Lose that
file, damage it, or move the work directory (its paths are absolute), and
doit would make everything again, from debootstrap on, though every target is
there and made from the same inputs.

So when a task has succeeded (or is found up to date without such a record),
what doit saved of it is written beside its targets too, in
<target's directory>/.doit-state/<task>.json, with paths relative to the work
directory and the project; it travels with them (a copy, a restore from CI
artifacts). Before doit opens its database, ``prepare`` checks it:

- damaged (sqlite cannot read it): set aside with one warning, as
  .doit.db.damaged-<time>, and made again from these records;
- missing, or written for another place (the work directory moved): made
  again from these records;

and doit itself then compares each input with what the record says (sizes,
digests), so a task runs again exactly when it would have with its database.
Commands that only read (list, info, verify, ...) change nothing: they read
a copy made in a temporary directory, or an empty database.
"""

from __future__ import annotations

import atexit
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from doit.dependency import JSONCodec, SqliteDB

from tasks.system import atomic

FORMAT = 1
DIRECTORY = ".doit-state"
LOCATION_SUFFIX = ".location"  # beside the database: the work directory it was written for
IN_MEMORY = ":memory:"
# What doit saves of a task besides its file dependencies (doit.dependency.Dependency).
_KEYS = ("_values_:", "checker:", "deps:", "result:")
_WORKDIR, _ROOT = "$WORKDIR", "$ROOT"


class Places:
    """The two directories a record's paths are relative to."""

    def __init__(self, workdir: Path, root: Path):
        self.workdir, self.root = workdir, root

    def portable(self, path: str) -> str:
        for token, base in ((_WORKDIR, self.workdir), (_ROOT, self.root)):  # the work directory may lie in the root
            if path == str(base) or path.startswith(f"{base}/"):
                return token + path[len(str(base)) :]
        return path

    def local(self, path: str) -> str:
        for token, base in ((_WORKDIR, self.workdir), (_ROOT, self.root)):
            if path == token or path.startswith(f"{token}/"):
                return str(base) + path[len(token) :]
        return path


def record_path(task) -> Path | None:
    """Where a task's state is kept: beside its first target, in the work directory; None for a task
    doit never finds up to date (no targets, or always run)."""
    if not task.targets or any(check is False for check, _, _ in task.uptodate):
        return None
    target = Path(task.targets[0])
    return target.parent / DIRECTORY / f"{task.name}.json"


def save(task, dep_manager, places: Places, only_if_missing: bool = False) -> None:
    """Keep what doit saved of task beside its targets (after doit saved it, in its main process)."""
    path = record_path(task)
    if path is None or path.parent.parent.parent != places.workdir:
        return  # found again only among <workdir>/*/
    if only_if_missing and path.exists():
        return
    get = dep_manager.backend.get
    saved: dict[str, Any] = {key: get(task.name, key) for key in _KEYS}
    if saved["checker:"] is None:
        return  # doit keeps nothing of it (yet)
    saved["deps:"] = [places.portable(dep) for dep in saved["deps:"] or ()]
    files = {places.portable(dep): get(task.name, dep) for dep in task.file_dep}
    record = {"format": FORMAT, "task": task.name, "saved": saved, "files": files}
    try:
        atomic.write_json(path, record, durable=False)  # lost in a crash, the task only runs again
    except OSError as error:
        print(
            f"warning: {path}: {error.strerror}: doit's state of {task.name} is kept in its database only",
            file=sys.stderr,
        )


def _records(workdir: Path) -> list[dict]:
    found = []
    for path in sorted(workdir.glob(f"*/{DIRECTORY}/*.json")):
        try:
            record = json.loads(path.read_bytes())
            if isinstance(record, dict) and record.get("format") == FORMAT and record.get("task") == path.stem:
                found.append(record)
        except (OSError, ValueError):
            continue  # a damaged record: that task runs again
    return found


def restore(target: Path, places: Places) -> int:
    """Make doit's database at target from the records in the work directory; how many tasks it holds."""
    db = SqliteDB(str(target), JSONCodec())
    count = 0
    for record in _records(places.workdir):
        name, saved = record["task"], record["saved"]
        if db.in_(name):
            continue
        for key in _KEYS:
            if saved.get(key) is not None:
                value = saved[key]
                db.set(name, key, [places.local(dep) for dep in value] if key == "deps:" else value)
        for dep, state in record["files"].items():
            if state is not None:
                db.set(name, places.local(dep), state)
        count += 1
    db.dump()
    return count


def _healthy(path: Path) -> str | None:
    """Why sqlite cannot read doit's database at path, or None."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            check = connection.execute("PRAGMA quick_check").fetchall()
            connection.execute("SELECT count(*) FROM doit").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as error:
        return str(error)
    return None if check == [("ok",)] else "; ".join(str(row[0]) for row in check[:3])


def prepare(dep_file: Path, places: Places, writable: bool) -> str:
    """The database doit should open: dep_file, checked (and made again from the records when it is
    missing, damaged or another place's), or, for a command that changes nothing, a copy."""
    workdir = places.workdir
    location = dep_file.with_name(dep_file.name + LOCATION_SUFFIX)
    problem = _healthy(dep_file) if dep_file.exists() else None
    written_for = location.read_text().strip() if location.is_file() else None
    if dep_file.exists() and problem is None and written_for in (None, str(workdir)):
        if writable and written_for is None:
            atomic.write_text(location, f"{workdir}\n")  # a database of before these records: taken as this place's
        return str(dep_file)
    if problem:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        if writable:
            aside = dep_file.with_name(f"{dep_file.name}.damaged-{stamp}")
            dep_file.rename(aside)
            print(
                f"warning: {dep_file} is damaged ({problem}): set aside as {aside.name}; "
                "made again from the tasks' records",
                file=sys.stderr,
            )
        else:
            print(
                f"warning: {dep_file} is damaged ({problem}): read as made again from the tasks' records",
                file=sys.stderr,
            )
    elif dep_file.exists() and written_for != str(workdir) and writable:
        # Written where the work directory was before (its paths are absolute there).
        dep_file.unlink()
        print(
            f"note: {workdir} was at {written_for}: doit's state is made again from the tasks' records", file=sys.stderr
        )
    if not writable:
        return _temporary_copy(places)
    if not workdir.is_dir():
        return str(dep_file)
    restore(dep_file, places)
    atomic.write_text(location, f"{workdir}\n")
    return str(dep_file)


def _temporary_copy(places: Places) -> str:
    if not places.workdir.is_dir() or not _records(places.workdir):
        return IN_MEMORY
    scratch = Path(tempfile.mkdtemp(prefix="doit-state-"))
    atexit.register(shutil.rmtree, scratch, True)
    target = scratch / "doit.db"
    restore(target, places)
    return str(target)
