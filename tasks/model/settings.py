"""The settings schema: each section of matrix.yaml is a dataclass, and each
setting is declared once, with its default, what it accepts and what it means.

Parsing (tasks/model/matrix.py) checks a section against its fields, the
error messages say what a field accepts, and README.md's settings table is
made from the same declarations (`python -m tasks.model.settings`; a test
keeps the README in step). matrix.yaml states only what differs from these
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
    def string_list(self, value: Any, path: str, item: Callable[[Any, str], str]) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Check:
    """What a setting accepts: in words (for the README and errors) and as a check."""

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


def names(pattern: re.Pattern, what: str) -> Check:
    """A non-empty list of names, none twice."""
    return Check(
        f"a list of {what}s", lambda r, v, p: r.string_list(v, p, lambda item, q: r.string(item, q, pattern, what))
    )


URL = re.compile(r"^https?://\S+$")
REGION = re.compile(r"^(all|[a-z]{2}(-[a-z]+)+-\d+)$")
AZURE_REGION = re.compile(r"^[a-z][a-z0-9]+$")
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


def setting(default: Any, meaning: str, accepts: Check) -> Any:
    """A dataclass field that is a setting of matrix.yaml."""
    return field(default=default, metadata={"meaning": meaning, "accepts": accepts})


def required(meaning: str, accepts: Check) -> Any:
    """A setting without default: the section needs it."""
    return field(metadata={"meaning": meaning, "accepts": accepts})


@dataclass(frozen=True)
class BuildSettings:
    mirror: str = setting(
        "http://deb.debian.org/debian", "the Debian mirror builds install from (http: see README)", url()
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


# Each cloud platform's account, under release.platforms.<vendor>
# (tasks/release/platforms/). Credentials never: they come from the environment.


@dataclass(frozen=True)
class Ec2Settings(PlatformSettings):
    region: str = required("the AWS region the AMI is registered in (imported there, copied from there)", text())
    bucket: str = required("the S3 bucket the disk is imported from", text())
    prefix: str = setting("", "a key prefix in the bucket", text())
    regions: tuple[str, ...] = setting(
        (), "more regions the AMI is copied to; `[all]`: every region the account has enabled", names(REGION, "region")
    )
    public: bool = setting(False, "make the AMIs and their snapshots public", boolean())
    deprecate_after_days: int = setting(
        0, "days after which EC2 marks the AMIs deprecated (hidden from searches); 0: never", whole(0, 3650)
    )
    ssm_prefix: str = setting(
        "",
        "SSM parameters under this path name the newest AMI per release, vendor and arch, and each version's "
        "(`<prefix>/<release>/<vendor>/<arch>/latest`); none when empty",
        path_prefix(),
    )
    import_timeout: float = setting(3600, "seconds the snapshot import may take", number(0, 86400))
    copy_timeout: float = setting(3600, "seconds a copy to another region may take", number(0, 86400))

    def conflicts(self) -> list[tuple[str, str]]:
        if "all" in self.regions and len(self.regions) > 1:
            return [("regions", "`all` stands alone: every enabled region")]
        return []


@dataclass(frozen=True)
class AzureSettings(PlatformSettings):
    subscription: str = required("the Azure subscription", text())
    resource_group: str = required("the resource group the image goes to", text())
    location: str = required("the Azure region", text())
    container_url: str = required("the blob container the VHD is uploaded to", plain_url())
    gallery: str = setting(
        "", "the Compute Gallery an image version goes to (how Debian publishes); none when empty", text()
    )
    gallery_image: str = setting(
        "", "the gallery's image definition (an -<arch> suffix is added); needed with a gallery", text()
    )
    storage_account_id: str = setting(
        "", "the resource id of the storage account holding container_url; needed with a gallery", text()
    )
    target_regions: tuple[str, ...] = setting(
        (), "regions the gallery version is replicated to, besides location", names(AZURE_REGION, "region")
    )
    managed_image: bool = setting(True, "also make a managed image (the way before galleries)", boolean())
    api_endpoint: str = setting("https://management.azure.com", "Azure Resource Manager", plain_url())

    def conflicts(self) -> list[tuple[str, str]]:
        found = []
        if self.gallery:
            found += [
                (key, f"needed with gallery {self.gallery!r}")
                for key in ("gallery_image", "storage_account_id")
                if not getattr(self, key)
            ]
        elif not self.managed_image:
            found.append(("managed_image", "false without a gallery makes no image at all"))
        return found


@dataclass(frozen=True)
class GceSettings(PlatformSettings):
    project: str = required("the Google Cloud project", text())
    bucket: str = required("the Cloud Storage bucket the disk is imported from", text())
    family: str = setting("", "the image family (an -<arch> suffix is added); none when empty", text())
    deprecate_previous: bool = setting(
        True, "mark the family's previous image DEPRECATED, pointing to the new one", boolean()
    )
    api_endpoint: str = setting("https://compute.googleapis.com", "the Compute Engine API", plain_url())
    storage_endpoint: str = setting("https://storage.googleapis.com", "the Cloud Storage API", plain_url())
    timeout: float = setting(1800, "seconds the image creation may take", number(0, 86400))
    poll_seconds: float = setting(10, "seconds between two looks at the creation", number(0, 86400))


PLATFORMS: dict[str, type] = {"ec2": Ec2Settings, "azure": AzureSettings, "gce": GceSettings}


@dataclass(frozen=True)
class NotifySettings:
    """release.notify: who hears of a release (tasks/release/notify.py)."""

    to: tuple[str, ...] = ()  # e-mail addresses; none: no mail
    sender: str = ""  # matrix.yaml's `from`
    smtp_host: str = "localhost"
    smtp_port: int = 25
    webhook: str | None = None  # IMAGES_WEBHOOK_URL wins (a URL holding a secret)


# The sections whose every key is a plain setting, as matrix.yaml names them.
SECTIONS: dict[str, type] = {
    "build": BuildSettings,
    "compress": CompressSettings,
    "boot_test": BootTestSettings,
    "publish": PublishSettings,
}


def settings_of(section: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(section) if "accepts" in f.metadata]


def required_settings(section: type) -> list[str]:
    return [f.name for f in settings_of(section) if f.default is dataclasses.MISSING]


def parse(r: Reader, value: dict, section: type, path: str) -> Any:
    """A section from its (already key-checked) mapping; defaults from the dataclass."""
    known = {f.name: f for f in settings_of(section)}
    return section(
        **{key: known[key].metadata["accepts"].check(r, item, f"{path}.{key}") for key, item in value.items()}
    )


def table() -> str:
    """README.md's table of these settings, in Markdown."""
    lines = ["| setting | default | accepts | meaning |", "|---|---|---|---|"]
    sections = [*SECTIONS.items(), *((f"release.platforms.{name}", cls) for name, cls in PLATFORMS.items())]
    for name, section in sections:
        for f in settings_of(section):
            default = (
                "(required)"
                if f.default is dataclasses.MISSING
                else "(none)"
                if f.default in ("", ())
                else f"`{f.default}`"
            )
            accepts, meaning = f.metadata["accepts"].accepts, f.metadata["meaning"]
            lines.append(f"| `{name}.{f.name}` | {default} | {accepts} | {meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
