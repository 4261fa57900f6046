"""tasks/model/version.py: what a version is, and their order."""

from datetime import UTC, datetime

import pytest

from tasks.model.version import NotAVersion, Version, newest, ordered


@pytest.mark.parametrize("text", ["20261207-0600", "20261207-3", "20240229-1", "20261207-123456789"])
def test_dated_versions_parse_as_written(text):
    assert str(Version.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "rc1",
        "latest",
        "e2e-1",
        "20261207",
        "20261207-",
        "2026120-1",
        "20261232-1",
        "20250229-1",
        "20261207-1a",
        "20261207-1234567890",
        " 20261207-1",
        "daily",
    ],
)
def test_anything_else_is_not_a_version(text):
    with pytest.raises(NotAVersion, match=r"expected a version YYYYMMDD-N .*, got " + repr(text).replace("\\", "\\\\")):
        Version.parse(text)
    assert Version.of(text) is None


def test_versions_sort_by_date_then_serial_as_a_number():
    given = ["20261207-10", "20261206-2359", "20261207-9", "20261207-0600", "20261207-600", "rc1", "20261207-1200"]
    assert ordered(given) == [
        "20261206-2359",
        "20261207-9",
        "20261207-10",
        "20261207-0600",
        "20261207-600",
        "20261207-1200",
    ]
    assert newest(given) == "20261207-1200"
    assert newest(["rc1", "latest"]) is None
    assert Version.parse("20261208-1") > Version.parse("20261207-2359")


def test_a_four_digit_serial_is_the_time_it_was_made():
    assert Version.parse("20261207-0635").moment == datetime(2026, 12, 7, 6, 35, tzinfo=UTC)
    for text in ("20261207-3", "20261207-123", "20261207-2400", "20261207-12345"):
        assert Version.parse(text).moment is None, text
    started = datetime(2026, 12, 7, 6, 35, 59, tzinfo=UTC)
    assert str(Version.of_run(started)) == "20261207-0635"
