"""Outputs appear complete or not at all."""

import os

import pytest

from tasks.system import atomic


def test_output_renames_on_success(tmp_path):
    target = tmp_path / "out.json"
    with atomic.output(target) as partial:
        partial.write_text("done")
        assert not target.exists()
        assert partial.name.startswith(".out.json.") and partial.name.endswith(".partial")
    assert target.read_text() == "done"
    assert os.listdir(tmp_path) == ["out.json"]


def test_output_keeps_previous_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("previous")
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error):
            with atomic.output(target) as partial:
                partial.write_text("half")
                raise error()
        assert target.read_text() == "previous"
        assert os.listdir(tmp_path) == ["out.json"]


def test_keep_suffix_for_format_sniffing_tools(tmp_path):
    partial = atomic.partial_path(tmp_path / "image.qcow2", keep_suffix=True)
    assert partial.suffix == ".qcow2" and partial.name.startswith(".image.qcow2.")


def test_stale_partials_of_killed_runs_are_removed(tmp_path):
    target = tmp_path / "disk.raw"
    (tmp_path / ".disk.raw.12345.partial.raw").write_text("killed run")
    (tmp_path / ".other.12345.partial").write_text("someone else's")
    with atomic.output(target, keep_suffix=True) as partial:
        partial.write_text("new")
    assert sorted(os.listdir(tmp_path)) == [".other.12345.partial", "disk.raw"]
