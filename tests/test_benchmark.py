"""tools/benchmark.py is a report: a failed command ends only its own measurement."""

import sys


def test_a_failed_command_ends_its_measurement_only_and_the_run_ends_with_it(benchmark, capsys):
    report = benchmark.Report()
    failing = [sys.executable, "-c", "import sys; print('line one'); print('the cell failed'); sys.exit(3)"]
    measured = []

    assert report.attempt("bookworm-nocloud-amd64", lambda: measured.append(benchmark.timed(failing))) is False
    assert report.attempt("bookworm-nocloud-arm64", lambda: measured.append(benchmark.timed(["true"]))) is True

    assert len(measured) == 1  # the second measurement was made
    assert report.end() == 1
    out = capsys.readouterr().out
    assert "bookworm-nocloud-amd64: FAILED, no figures:" in out
    assert "failed (3)" in out and "    | the cell failed" in out  # the command's own output, shown
    assert "1 of 2 measurements done" in out
    assert "FAILED bookworm-nocloud-amd64" in out and "FAILED bookworm-nocloud-arm64" not in out


def test_a_run_without_failures_ends_well(benchmark, capsys):
    report = benchmark.Report()
    assert report.attempt("noop", lambda: benchmark.timed(["true"])) is True
    assert report.end() == 0
    assert "1 of 1 measurements done" in capsys.readouterr().out


def test_an_unchecked_command_may_fail(benchmark):
    wall, cpu, out = benchmark.timed([sys.executable, "-c", "print('ok'); raise SystemExit(1)"], check=False)
    assert out == "ok\n" and wall > 0


def test_doits_floor_is_a_no_op_over_the_real_graphs_tasks(benchmark, tmp_path):
    # The no-op section's baseline: doit alone over the graph dodo.py makes for
    # these options, in a work directory where every target of the full tier
    # is recorded as built. Were its tasks, files or records not the graph's,
    # doit would execute some of them and the floor would measure work.
    options = benchmark.stand_in_workdir(tmp_path, [f"workdir={tmp_path}/build", f"storage={tmp_path}/storage"])
    runs = benchmark.doit_floor(options, attempts=2)

    assert len(runs) == 2
    for wall, _, out in runs:
        assert wall > 0
        assert benchmark.executed(out) == 0
        assert out.count("-- ") > 100  # the full matrix's tasks, each found up to date
