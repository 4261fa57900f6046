"""The command-line options (``doit name=value ...``), each declared once: its
name, default, what it accepts and what it means.

tasks/model/plan.py reads them through this table, the error messages say
what an option accepts, and docs/graph.md's options table is made from it
(`python -m tasks.model.options`; a test keeps the page in step). What an
option accepts is the settings' own check where it overrides a setting
(xz_level: compress.xz_level), so a range is written once.

Options that are yes or no take true/false and 1/0 alike (GitLab's variables
say true and false). An empty value is the default, anything else that the
option does not accept is an error naming it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tasks.model import settings
from tasks.model.matrix import MatrixError
from tasks.model.settings import Check, Reader
from tasks.model.version import NotAVersion, Version

# An image named by its manifest's digest: what it is can never change (builder=).
PINNED_IMAGE = re.compile(r"[^@\s]+@sha256:[0-9a-f]{64}")
_YES, _NO = ("yes", "true", "1"), ("no", "false", "0")
# Where an option's error says the mistake is.
COMMAND_LINE = "command line"


def _yes_or_no() -> Check:
    def check(r: Reader, value: Any, path: str) -> bool:
        if value.lower() in _YES:
            return True
        if value.lower() in _NO:
            return False
        raise r.fail(path, f"expected yes or no, got {value!r}")

    return Check("`yes` or `no`", check)


def _version() -> Check:
    def check(r: Reader, value: Any, path: str) -> str:
        try:
            Version.parse(value)
        except NotAVersion as error:
            raise r.fail(path, str(error)) from None
        return value

    return Check("a version, `YYYYMMDD-N` (tasks/model/version.py)", check)


def _pinned_image() -> Check:
    def check(r: Reader, value: Any, path: str) -> str:
        if not PINNED_IMAGE.fullmatch(value):
            raise r.fail(path, f"expected an image pinned by digest, <image>@sha256:<64 hex digits>, got {value!r}")
        return value

    return Check("an image pinned by digest, `<image>@sha256:<hex>`", check)


def _overrides(section: type, name: str) -> Check:
    """What the matrix setting accepts: the option states a setting of its own run."""
    return next(f for f in settings.settings_of(section) if f.name == name).metadata["accepts"]


@dataclass(frozen=True)
class Option:
    name: str
    meaning: str
    accepts: Check
    default: Any = None  # the value when the option is not given (None: see default_words)
    default_words: str = ""  # the default in words, where it is not a plain value

    def read(self, reader: Reader, given: str | None) -> Any:
        if not given:
            return self.default
        return self.accepts.check(reader, given, self.name)


OPTIONS: tuple[Option, ...] = (
    Option("matrix", "the matrix file", settings.text(), "matrix.yaml"),
    Option("tier", "the cells of the stage groups and of the default run", settings.text(), "push"),
    Option("workdir", "where images are built, and doit's state (`.doit.db`)", settings.text(), "build"),
    Option(
        "storage",
        "where images are published: a directory, or a `file://`, `http(s)://` (WebDAV) or `s3://` URL",
        settings.text(),
        default_words="`publish.storage` of the matrix",
    ),
    Option(
        "version",
        "the version of published images (remakes manifests, not images)",
        _version(),
        default_words="the version the cell's build recorded: the UTC start of its run, `YYYYMMDD-HHMM`",
    ),
    Option(
        "xz_level",
        "overrides `compress.xz_level`",
        _overrides(settings.CompressSettings, "xz_level"),
        default_words="`compress.xz_level` of the matrix",
    ),
    Option(
        "step_cache",
        "`no`: builds make every step and keep none, for work directories thrown away (CI jobs)",
        _yes_or_no(),
        True,
    ),
    Option(
        "source",
        "for `doit ci`: the pipeline's source (push, schedule, web, api, trigger, ...)",
        settings.text(),
        "push",
    ),
    Option(
        "cells",
        'for `doit ci`: cell patterns to build instead of a tier (`"trixie-*-arm64 sid-ec2-*"`); '
        "for `doit images`: the cells to list",
        settings.text(),
        default_words="`doit ci`: the source's tier; `doit images`: every cell",
    ),
    Option(
        "protected",
        "for `doit ci`: the pipeline's ref is protected (`$CI_COMMIT_REF_PROTECTED`): only then has it a release job",
        _yes_or_no(),
        False,
    ),
    Option(
        "builder",
        "for `doit ci`: the builder image every job runs in (anything not pinned by digest is refused)",
        _pinned_image(),
        default_words="`ci.image`, tagged with the digest of the builder's inputs",
    ),
    Option(
        "confirm",
        "`yes` lets `doit release:<cell>` release and `doit cleanup` delete",
        _yes_or_no(),
        False,
    ),
    Option(
        "left",
        "for `doit compare`: an image facts report, a cell name, a facts.json or a manifest; "
        "for `doit changes`: an image, a cell (its build here) or `<cell>@<version>` (storage)",
        settings.text(),
    ),
    Option("right", "the other side of `left`", settings.text()),
    Option(
        "image",
        "for `doit verify`: `<cell>[@<version>]` in storage (no version: the newest daily)",
        settings.text(),
    ),
    Option("key", "for `doit verify`: the signer's public key file", settings.text()),
)
BY_NAME = {option.name: option for option in OPTIONS}


class CommandLine:
    """The settings' Reader for options: values are the command line's strings."""

    def fail(self, path: str, message: str) -> Exception:
        return MatrixError(COMMAND_LINE, path, message)

    def string(self, value: Any, path: str, pattern: re.Pattern | None = None, expected: str = "a string") -> str:
        if pattern and not pattern.match(value):
            raise self.fail(path, f"expected {expected}, got {value!r}")
        return value

    def integer(self, value: Any, path: str, low: int, high: int) -> int:
        if not value.isdigit() or not low <= int(value) <= high:
            raise self.fail(path, f"expected a whole number from {low} to {high}, got {value!r}")
        return int(value)

    def number(self, value: Any, path: str, low: float, high: float) -> float:
        try:
            number = float(value)
        except ValueError:
            number = low - 1
        if not low <= number <= high:
            raise self.fail(path, f"expected a number from {low:g} to {high:g}, got {value!r}")
        return number

    def choice(self, value: Any, path: str, choices: Iterable[str]) -> str:
        choices = list(choices)
        if value not in choices:
            raise self.fail(path, f"expected one of: {', '.join(choices)}, got {value!r}")
        return value

    def mapping(self, value: Any, path: str, allowed: Iterable[str], required: Iterable[str] = ()) -> dict:
        raise self.fail(path, f"a mapping cannot be given on the command line, got {value!r}")

    def string_list(self, value: Any, path: str, item: Callable[[Any, str], str]) -> tuple[str, ...]:
        return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value.split()))


def read(get: Callable[[str], str | None], given: Iterable[str] = ()) -> dict[str, Any]:
    """Every option's value by name, checked; given: the names on the command line, to refuse unknown ones."""
    reader = CommandLine()
    for name in given:
        if name not in BY_NAME:
            raise reader.fail(name, f"unknown option (expected one of: {', '.join(BY_NAME)})")
    return {option.name: option.read(reader, get(option.name)) for option in OPTIONS}


def table() -> str:
    """docs/graph.md's table of the options, in Markdown."""
    lines = ["| option | default | accepts | meaning |", "|---|---|---|---|"]
    for option in OPTIONS:
        default = option.default_words or ("(none)" if option.default is None else _words(option.default))
        lines.append(f"| `{option.name}` | {default} | {option.accepts.accepts} | {option.meaning} |")
    return "\n".join(lines) + "\n"


def _words(value: Any) -> str:
    if isinstance(value, bool):
        return "`yes`" if value else "`no`"
    return f"`{value}`"


if __name__ == "__main__":
    print(table(), end="")
