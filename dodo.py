"""doit entry point: the image matrix as a task graph (see tasks/graph.py).

    doit list                               every task
    doit                                    build, test and publish the push tier
    doit boottest:bookworm-nocloud-amd64    one cell, up to its boot test
    doit tier=full storage=/srv/images      every cell, published elsewhere
    doit release:<cell> confirm=yes         the manual release of one cell

Options (name=value) are listed in tasks/model/plan.py.
"""

import faulthandler
import fnmatch
import multiprocessing
import os
import signal
import sys
from pathlib import Path

from doit import doit_cmd, get_var

from tasks import cmdline, commands, graph, summary, taskstate
from tasks.model import plan
from tasks.model.matrix import MatrixError
from tasks.system import cpu, proc, runlock
from tasks.system.checksum import XXH3Checker


def _stop_on_signal(signum, frame):
    # Ctrl-C (SIGINT) or a cancelled CI job (SIGTERM). Every worker of a
    # parallel run and every child of a stage is told at once, so all of
    # them stop within seconds; in this process, a KeyboardInterrupt stops
    # the running stage cleanly and lets doit save the state of finished tasks.
    if multiprocessing.parent_process() is None:
        for worker in multiprocessing.active_children():
            worker.terminate()  # a SIGTERM: the worker runs this same handler
    proc.signal_running(signal.SIGTERM)
    if not proc.note_stop(signum):
        return  # a second signal while stopping: the first one is being handled
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _report_interruption(kind, value, traceback):
    # doit saves the state of finished tasks, then lets the interruption
    # through; one line says so instead of a traceback.
    if issubclass(kind, KeyboardInterrupt):
        # Workers were told to stop; multiprocessing waits for them at exit,
        # so whatever still runs after a few seconds is killed.
        for worker in multiprocessing.active_children():
            worker.join(WORKER_GRACE_SECONDS)
            if worker.is_alive() and worker.pid is not None:
                # Where it hung, on stderr, before it is killed.
                os.kill(worker.pid, signal.SIGUSR1)
                worker.join(1)
                worker.kill()
        cause = value.args[0] if value.args else "SIGINT"
        print(f"interrupted ({cause}): finished tasks are recorded; run doit again to go on", file=sys.stderr)
    else:
        sys.__excepthook__(kind, value, traceback)


# A stopping worker ends its stage's children first (proc.stop gives each 10 s),
# then detaches and unmounts what they left: killed before that, it would
# leave a loop device attached. Workers that stop at once are not waited for.
WORKER_GRACE_SECONDS = 40
signal.signal(signal.SIGTERM, _stop_on_signal)
faulthandler.register(signal.SIGUSR1, all_threads=True)
signal.signal(signal.SIGINT, _stop_on_signal)
sys.excepthook = _report_interruption
# doit's worker processes (-n N) stop when the main process dies, even by SIGKILL.
proc.forked_children_stop_with_parent()

try:
    # doit keeps the name=value pairs of the command line in a module global;
    # reading their names lets a misspelt option fail instead of being ignored.
    given = list(getattr(doit_cmd, "_CMDLINE_VARS", None) or {})
    PLAN = plan.from_options(Path(__file__).resolve().parent, get_var, given)
except MatrixError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def _stop(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


INVOCATION = cmdline.parse(sys.argv[1:])
# Commands that only read, and runs of the tasks that need no work directory (doit verify
# image=...), change nothing in it: no lock, nothing made, no state written.
READS_ONLY = INVOCATION.command in cmdline.READING_COMMANDS or INVOCATION.only(commands.WORKDIR_FREE)
PLACES = taskstate.Places(PLAN.workdir, PLAN.root)
try:
    if not READS_ONLY:
        PLAN.workdir.mkdir(parents=True, exist_ok=True)
        runlock.hold(PLAN.workdir)
    # doit's database, checked first: one damaged, lost or moved is made again from the tasks' records.
    DEP_FILE = taskstate.prepare(PLAN.workdir / ".doit.db", PLACES, writable=not READS_ONLY)
except runlock.WorkdirBusy as error:
    _stop(str(error))
except OSError as error:
    why = "not a directory" if PLAN.workdir.exists() and not PLAN.workdir.is_dir() else error.strerror or str(error)
    _stop(f"command line: workdir: {PLAN.workdir} cannot be the work directory: {why}")
if INVOCATION.tasks:
    # doit runs nothing, and says nothing, for a pattern that matches no task; a wrong name
    # ends in a traceback (info) or a paragraph: one line says which name is wrong.
    NAMES = list(graph.load_tasks(PLAN))
    for pattern in INVOCATION.wildcards:
        if not fnmatch.filter(NAMES, pattern):
            _stop(f"command line: no task matches {pattern!r} (`doit list --all` names them all)")
    for name in INVOCATION.names:
        if name not in NAMES and not Path(name).exists():  # run also takes a target's path
            _stop(f"command line: no task named {name!r} (`doit list --all` names them all)")
DOIT_CONFIG = {
    # dbm falls back to the unsafe dbm.dumb on some hosts; sqlite3 is safe.
    "backend": "sqlite3",
    "dep_file": DEP_FILE,
    "default_tasks": ["publish"],
    # Stages report progress themselves; let their output through.
    "verbosity": 2,
    # xxh3 instead of md5, each file hashed at most once per run.
    "check_file_uptodate": XXH3Checker,
    # One job per core by default (doit -n N to choose): stages share the
    # cores through CPU slots (tasks/system/cpu.py), so jobs never oversubscribe.
    "num_process": cpu.cores(),
    "par_type": "process",
    # A failed cell never stops the others: doit goes on with every task
    # that does not depend on the failure, and skips those that do.
    "continue": True,
    # doit's console output, then the run summary table (tasks/summary.py); each task's state kept
    # beside its targets (tasks/taskstate.py).
    "reporter": summary.reporter_for(
        PLAN.matrix, None if READS_ONLY else PLAN.run_summary, None if READS_ONLY else PLACES
    ),
}


# One task_<stage> per stage of the registry (tasks/registry.py), and the
# tools beside them: xfail-<stage> for known failures, ci, compare.
globals().update(graph.doit_tasks(PLAN))
