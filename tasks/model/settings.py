"""The settings schema: each section of matrix.yaml is a dataclass, and each
setting is declared once, with its default, what it accepts and what it means.

Parsing (tasks/model/matrix.py) checks a section against its fields, the
error messages say what a field accepts, and docs/matrix.md's settings table
is made from the same declarations (`python -m tasks.model.settings`; a test
keeps the page in step). matrix.yaml states only what differs from these
defaults.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tasks.model.arch import AUTO, Accelerator, Milestone


class Reader(Protocol):
    """What a check needs from the matrix reader (matrix._Reader)."""

    def fail(self, path: str, message: str) -> Exception: ...
    def string(self, value: Any, path: str, pattern: re.Pattern | None = None, expected: str = "a string") -> str: ...
    def integer(self, value: Any, path: str, low: int, high: int) -> int: ...
    def number(self, value: Any, path: str, low: float, high: float) -> float: ...
    def choice(self, value: Any, path: str, choices: Iterable[str]) -> str: ...
    def mapping(self, value: Any, path: str, allowed: Iterable[str], required: Iterable[str] = ()) -> dict: ...
    def string_list(self, value: Any, path: str, item: Callable[[Any, str], str]) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Check:
    """What a setting accepts: in words (for the docs and errors) and as a check."""

    accepts: str
    check: Callable[[Reader, Any, str], Any]


def whole(low: int, high: int) -> Check:
    return Check(f"a whole number from {low} to {high}", lambda r, v, p: r.integer(v, p, low, high))


def number(low: float, high: float) -> Check:
    return Check(f"a number from {low:g} to {high:g}", lambda r, v, p: r.number(v, p, low, high))


def one_of(choices: Iterable[str]) -> Check:
    options = [str(c) for c in choices]
    return Check("one of " + ", ".join(f"`{c}`" for c in options), lambda r, v, p: r.choice(v, p, options))


def text() -> Check:
    return Check("text", lambda r, v, p: r.string(v, p))


def names(pattern: re.Pattern, one: str, many: str, empty: bool = False) -> Check:
    """A list of names, none twice, empty only where allowed; one: an item in words, for errors; many: the
    items, for the docs."""

    def check(r: Reader, value: Any, path: str) -> tuple[str, ...]:
        if empty and value == []:
            return ()
        return r.string_list(value, path, lambda item, q: r.string(item, q, pattern, one))

    return Check(f"a list of {many}" + (", or `[]`" if empty else ""), check)


URL = re.compile(r"^https?://\S+$")
NAME = re.compile(r"^[a-z][a-z0-9]*$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
PROJECT = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$")
BRANCH = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_./-]*$")
RUNNER_TAG = re.compile(r"^[A-Za-z0-9_.:/-][A-Za-z0-9 _.:/-]*$")
# GitLab's artifacts:expire_in: "never", or amounts with units ("7 days", "1 week 2 days").
DURATION = re.compile(
    r"^(never|(\d+\s*(s|sec|secs?|seconds?|m|min|mins?|minutes?|h|hrs?|hours?|d|days?|w|wks?|weeks?|"
    r"mo|months?|y|yrs?|years?)\s*)+)$"
)
PATH_PREFIX = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")
HOSTNAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def url() -> Check:
    return Check("an http:// or https:// URL", lambda r, v, p: r.string(v, p, URL, "an http:// or https:// URL"))


def hostname() -> Check:
    return Check("a host name", lambda r, v, p: r.string(v, p, HOSTNAME, "a host name"))


def path_prefix() -> Check:
    return Check("a path such as `/debian/images`", lambda r, v, p: r.string(v, p, PATH_PREFIX, "a path (/a/b)"))


def boolean() -> Check:
    def check(r: Reader, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise r.fail(path, f"expected true or false, got {value!r}")
        return value

    return Check("true or false", check)


def plain_url(hint: str = "") -> Check:
    """A URL that holds no secret: credentials come from the environment."""

    def check(r: Reader, value: Any, path: str) -> str:
        if isinstance(value, str) and "@" in value:
            # Not echoed: what stands before the @ is a secret.
            raise r.fail(path, "credentials do not belong in matrix.yaml: give them through the environment" + hint)
        return r.string(value, path, URL, "an http(s) URL")

    return Check("an http(s) URL without credentials", check)


def setting(default: Any, meaning: str, accepts: Check, key: str = "") -> Any:
    """A dataclass field that is a setting of matrix.yaml (key: its name there, when not the field's)."""
    metadata = {"meaning": meaning, "accepts": accepts, "key": key}
    if isinstance(default, dict):  # a mutable default: each section gets its own copy
        return field(default_factory=lambda: dict(default), metadata={**metadata, "default": default})
    return field(default=default, metadata=metadata)


def default_of(f: dataclasses.Field) -> Any:
    """A setting's default; dataclasses.MISSING when it is required."""
    return f.metadata.get("default", f.default)


def subsection(section: type) -> Any:
    """A dataclass field that is a section of its own under this one (release.notify)."""
    return field(default_factory=section, metadata={"section": section})


def optional(check: Check) -> Check:
    """A setting that may be left empty (`webhook:`, `release_project: ""`): as it is given."""
    return Check(check.accepts, lambda r, v, p: v if v in (None, "") else check.check(r, v, p))


def pattern(regex: re.Pattern, what: str) -> Check:
    return Check(what, lambda r, v, p: r.string(v, p, regex, what))


def mapping_of(item: Check, what: str) -> Check:
    """A mapping from names (checked by whoever knows them) to values that item accepts."""

    def check(r: Reader, value: Any, path: str) -> dict:
        given = r.mapping(value or {}, path, list(value or {}))
        return {name: item.check(r, v, f"{path}.{name}") for name, v in given.items()}

    return Check(f"a mapping of {what}", check)


def required(meaning: str, accepts: Check) -> Any:
    """A setting without default: the section needs it."""
    return field(metadata={"meaning": meaning, "accepts": accepts})


@dataclass(frozen=True)
class BuildSettings:
    mirror: str = setting(
        "http://deb.debian.org/debian",
        "the Debian mirror builds install from (http: see docs/config-space.md, Deviations)",
        url(),
    )
    security_mirror: str = setting("http://deb.debian.org/debian-security", "the security mirror builds use", url())
    image_mirror: str = setting(
        "https://deb.debian.org/debian", "what the finished image's apt uses (/etc/apt/mirrors/debian.list)", url()
    )
    image_security_mirror: str = setting(
        "https://deb.debian.org/debian-security", "what the finished image's apt uses for security updates", url()
    )
    hostname: str = setting("debian", "the host name of the build", hostname())
    base_max_age_days: int = setting(7, "the shared base system is made again after this many days", whole(1, 365))


@dataclass(frozen=True)
class CompressSettings:
    xz_level: int = setting(
        9, "xz's level for the published images (`doit xz_level=1` for quick local runs)", whole(0, 9)
    )
    xz_threads: int = setting(0, "xz processes at most; 0: one per free CPU slot", whole(0, 1024))


@dataclass(frozen=True)
class BootTestSettings:
    timeout: int = setting(
        600, "seconds a silent boot may take (a failing one stops when the console says why)", whole(10, 7200)
    )
    memory: int = setting(1024, "MiB of each boot", whole(256, 65536))
    cpus: int = setting(1, "vCPUs of each boot at least (a second one when a core is free)", whole(1, 64))
    accelerator: str = setting(
        AUTO, "`auto`: KVM when a boot shows it works here, else TCG", one_of([AUTO, *Accelerator])
    )
    until: str = setting(
        Milestone.LOGIN, "the milestone that passes the boot test (a vendor's `boot_until` wins)", one_of(Milestone)
    )


@dataclass(frozen=True)
class PublishSettings:
    storage: str = setting(
        "storage",
        "where `doit` publishes: a directory (relative to dodo.py), or a file://, "
        "http(s):// (WebDAV) or s3://bucket/prefix URL",
        text(),
    )
    keep_dailies: int = setting(14, "daily versions kept per release; older ones are deleted", whole(1, 10000))
    retries: int = setting(5, "attempts at each transfer", whole(1, 100))
    retry_delay: float = setting(1.0, "seconds before the second attempt, doubled each time", number(0, 600))


class PlatformSettings:
    """What every platform account's settings answer besides their fields."""

    def conflicts(self) -> list[tuple[str, str]]:
        """(setting, why) for each combination of settings that cannot work; checked after parsing."""
        return []


def platform_sections() -> dict[str, type]:
    """Each cloud platform's account settings (release.platforms.<vendor>), as its module declares them.

    The model imports the release's platforms here only, when a matrix names one
    or the table is made: each platform is one module (tasks/release/platforms/).
    """
    from tasks.release import platforms

    return {name: platform.settings for name, platform in platforms.registered().items()}


@dataclass(frozen=True)
class NotifySettings:
    """release.notify: who hears of a release (tasks/release/notify.py)."""

    to: tuple[str, ...] = setting(
        (),
        "the addresses the release mail goes to; none: no mail",
        names(EMAIL, "an e-mail address", "e-mail addresses"),
    )
    sender: str = setting(
        "", "the release mail's sender; needed with `to`", pattern(EMAIL, "an e-mail address"), "from"
    )
    smtp_host: str = setting("localhost", "the mail server the release mail goes through", text())
    smtp_port: int = setting(25, "its port", whole(1, 65535))
    webhook: str | None = setting(
        None,
        "a URL the release is posted to as JSON (one holding a secret goes in IMAGES_WEBHOOK_URL, which wins)",
        optional(plain_url(" (a webhook URL that holds a secret goes in IMAGES_WEBHOOK_URL)")),
    )

    def conflicts(self) -> list[tuple[str, str]]:
        return [("from", "missing (the sender of the release mail)")] if self.to and not self.sender else []


@dataclass(frozen=True)
class ReleaseSettings:
    """release: the manual release step (tasks/release/step.py)."""

    instance_test: tuple[str, ...] = setting(
        ("generic", "genericcloud", "ec2"),
        "vendors whose images are booted with a NoCloud seed and logged in to over SSH before release "
        "(tasks/release/instancetest.py): their cloud-init reads NoCloud and they have an SSH server, which "
        "gce (its guest agent needs Google's metadata server) and nocloud lack; by default, those of the matrix",
        names(NAME, "a vendor", "vendors", empty=True),
    )
    instance_test_timeout: int = setting(600, "seconds the instance test waits for SSH to answer", whole(30, 7200))
    keep_releases: int = setting(
        3, "released versions kept per cell on each platform; older ones go with `doit cleanup`", whole(1, 1000)
    )
    # vendor -> its platform's settings: a section per platform (platform_sections), read by the matrix
    platforms: dict[str, Any] = field(default_factory=dict)
    notify: NotifySettings = subsection(NotifySettings)


@dataclass(frozen=True)
class CiSettings:
    """ci: the GitLab CI pipeline (tasks/ci.py)."""

    image: str = setting("$CI_REGISTRY_IMAGE/builder", "the builder image's repository (tasks/builder)", text())
    tags: tuple[str, ...] = setting(
        (),
        "runner tags of the jobs that build no image",
        names(RUNNER_TAG, "a runner tag (letters, digits, ' _.:/-')", "runner tags"),
    )
    build_tags: dict[str, tuple[str, ...]] = setting(
        {},
        "runner tags of the jobs that build and boot an architecture's images, per architecture; else `tags`",
        mapping_of(
            names(RUNNER_TAG, "a runner tag (letters, digits, ' _.:/-')", "runner tags"), "architectures to runner tags"
        ),
    )
    expire_images: str = setting(
        "7 days",
        "how long GitLab keeps image data (records are kept for ever)",
        pattern(DURATION, "a GitLab duration such as '7 days' or 'never'"),
    )
    tiers: dict[str, str] = setting(
        {},
        "the tier of each pipeline source, `push` and `schedule`; else the tiers of those names, push and full",
        mapping_of(text(), "pipeline sources to tiers"),
    )
    release_project: str = setting(
        "",
        "the release project's path (`group/name`), whose pipeline the build pipeline's release job triggers; "
        "none: no release job",
        optional(pattern(PROJECT, "a GitLab project path (group/name)")),
    )
    release_branch: str = setting(
        "main", "the release project's branch the trigger runs", pattern(BRANCH, "a branch name")
    )
    build_project: str = setting(
        "",
        "the build project's path, whose protected refs' builds alone the release project releases",
        optional(pattern(PROJECT, "a GitLab project path (group/name)")),
    )

    secret_tags: tuple[str, ...] = setting(
        (),
        "runner tags of the jobs that hold a secret (keep: and upload: in pipelines of protected refs): runners "
        "registered for protected refs only; none: `tags`",
        names(RUNNER_TAG, "a runner tag (letters, digits, ' _.:/-')", "runner tags"),
    )
    gitlab_url: str = setting(
        "",
        "the GitLab both projects live on (`https://salsa.debian.org`): the release job asks its API, never the "
        "one a variable names; needed with release_project",
        optional(plain_url()),
    )
    trigger_inputs: bool = setting(
        True,
        "the release trigger passes `trigger:inputs` to the release project's `spec:inputs` (GitLab 17.11 and "
        "later); `false`: pipeline variables, for older GitLab",
        boolean(),
    )

    def conflicts(self) -> list[tuple[str, str]]:
        if self.release_project and not self.gitlab_url:
            return [("gitlab_url", "needed with release_project: the GitLab whose API the release job asks")]
        return []

    @property
    def push_tier(self) -> str:
        return self.tiers.get("push", "push")

    @property
    def schedule_tier(self) -> str:
        return self.tiers.get("schedule", "full")

    def runner_tags(self, arch: str) -> tuple[str, ...]:
        """The runners of the jobs that build and boot arch's images."""
        return self.build_tags.get(arch, self.tags)


# The sections of settings, as matrix.yaml names them.
SECTIONS: dict[str, type] = {
    "build": BuildSettings,
    "compress": CompressSettings,
    "boot_test": BootTestSettings,
    "publish": PublishSettings,
    "release": ReleaseSettings,
    "ci": CiSettings,
}


def settings_of(section: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(section) if "accepts" in f.metadata]


def subsections_of(section: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(section) if "section" in f.metadata]


def key_of(f: dataclasses.Field) -> str:
    """The setting's name in matrix.yaml."""
    return f.metadata.get("key") or f.name


def keys(section: type) -> list[str]:
    """Every key the section takes in matrix.yaml."""
    return [key_of(f) for f in (*settings_of(section), *subsections_of(section))]


def required_settings(section: type) -> list[str]:
    return [key_of(f) for f in settings_of(section) if default_of(f) is dataclasses.MISSING]


def parse(r: Reader, value: dict, section: type, path: str) -> Any:
    """A section from its (already key-checked) mapping; defaults from the dataclass, then its conflicts."""
    known = {key_of(f): f for f in settings_of(section)}
    parts = {f.name: f.metadata["section"] for f in subsections_of(section)}
    values = {}
    for key, item in value.items():
        if key in parts:
            sub = f"{path}.{key}"
            given = r.mapping(item or {}, sub, keys(parts[key]), required_settings(parts[key]))
            values[key] = parse(r, given, parts[key], sub)
        else:
            values[known[key].name] = known[key].metadata["accepts"].check(r, item, f"{path}.{key}")
    made = section(**values)
    for key, message in getattr(made, "conflicts", list)():
        raise r.fail(f"{path}.{key}", message)
    return made


def _rows(name: str, section: type) -> list[str]:
    rows = []
    for f in settings_of(section):
        value = default_of(f)
        default = (
            "(required)"
            if value is dataclasses.MISSING
            else "(none)"
            if value in ("", (), {}, None)
            else f"`[{', '.join(value)}]`"
            if isinstance(value, tuple)
            else f"`{str(value).lower()}`"
            if isinstance(value, bool)
            else f"`{value}`"
        )
        accepts, meaning = f.metadata["accepts"].accepts, f.metadata["meaning"]
        rows.append(f"| `{name}.{key_of(f)}` | {default} | {accepts} | {meaning} |")
    for f in subsections_of(section):
        rows += _rows(f"{name}.{f.name}", f.metadata["section"])
    return rows


def table() -> str:
    """docs/matrix.md's table of these settings, in Markdown."""
    lines = ["| setting | default | accepts | meaning |", "|---|---|---|---|"]
    sections = [*SECTIONS.items(), *((f"release.platforms.{name}", cls) for name, cls in platform_sections().items())]
    for name, section in sections:
        lines += _rows(name, section)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
