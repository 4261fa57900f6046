"""tasks/stages/identity.py: a build's times and identifiers derive from its inputs."""

import json
import os
from datetime import UTC, datetime

from tasks.model.records import BaseShares
from tasks.stages import identity

BASE_TIME = int(datetime(2026, 11, 27, 22, 30, tzinfo=UTC).timestamp())


def made_base(tmp_path):
    base = tmp_path / "bookworm-amd64.tar.zst"
    base.write_bytes(b"base")
    os.utime(base, (BASE_TIME, BASE_TIME))
    return base


def test_a_dated_version_is_the_build_time_else_the_base_time(tmp_path):
    base = made_base(tmp_path)
    assert identity.source_date_epoch("20261128-0039", base) == BASE_TIME + 2 * 3600 + 9 * 60
    assert identity.source_date_epoch("20261207-3", base) == BASE_TIME


def test_the_initramfs_time_is_the_base_time_whatever_the_later_version(tmp_path):
    base = made_base(tmp_path)
    # Two runs' dated versions after the base: one initramfs time, so the step cache reuses it.
    assert identity.initramfs_epoch("20261128-0039", base) == BASE_TIME
    assert identity.initramfs_epoch("20261129-1200", base) == BASE_TIME
    assert identity.initramfs_epoch("20261207-3", base) == BASE_TIME
    # A version older than the base bounds every time in the image, the initramfs's too.
    older = identity.source_date_epoch("20260101-0000", base)
    assert older < BASE_TIME and identity.initramfs_epoch("20260101-0000", base) == older


def test_the_base_time_is_its_archives_whenever_the_base_was_made(tmp_path):
    """A base made again from the same archive (a new tarball time, the same bytes) gives its
    images the same times: its record's archive time, not the tarball's."""
    base = made_base(tmp_path)
    archive_time = BASE_TIME - 6 * 3600
    record = BaseShares(["sudo"], [["linux-image-amd64"]], ["kmod"], archive_time)
    (tmp_path / "bookworm-amd64.shares.json").write_text(json.dumps(record.to_json()))
    for made in (BASE_TIME, BASE_TIME + 8 * 86400):
        os.utime(base, (made, made))
        assert identity.source_date_epoch("20261207-3", base) == archive_time
        assert identity.initramfs_epoch("20261207-3", base) == archive_time


def test_without_the_shared_base_the_initramfs_time_is_the_build_time(tmp_path):
    missing = tmp_path / "none.tar.zst"
    assert identity.initramfs_epoch("20261128-0039", missing) == identity.source_date_epoch("20261128-0039", missing)


def test_identifiers_differ_by_cell_version_and_role_and_repeat():
    ids = identity.disk_identifiers("bookworm-nocloud-amd64", "1")
    assert ids == identity.disk_identifiers("bookworm-nocloud-amd64", "1")
    assert len(set(ids.values())) == len(ids)
    assert ids != identity.disk_identifiers("bookworm-nocloud-amd64", "2")
    assert ids != identity.disk_identifiers("bookworm-genericcloud-amd64", "1")
    assert len(ids[identity.ESP_VOLUME_ID]) == 8
    assert set(ids) == set(identity.VARIABLES)
