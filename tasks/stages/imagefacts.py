"""The fidelity report: what a built image is, measured in the image itself.

Run inside the build on the finished tree (fai_config/tests/LAST/20-image-facts),
it records the facts by which an image is compared with Debian's official
one for the same cell, or with another build: installed packages, default
user, disk and partitions, fstab, kernel command line and GRUB timeout,
network stack, time source, apt sources, sshd settings, /etc/cloud-release,
the ESP's files. Values that differ on every build (UUIDs, the version) are
left out or masked, so that two builds of the same cell compare equal.

    python -m tasks.stages.imagefacts --root DIR --disk DEVICE --esp DEVICE --output facts.json
    python -m tasks.stages.imagefacts compare LEFT.json RIGHT.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tasks.stages.imagecheck import esp_files
from tasks.system import atomic, proc

SCHEMA = "image-facts/1"
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class FactsError(Exception):
    """A report that cannot be read or compared: one line says why."""


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def _mask(value: str) -> str:
    return _UUID.sub("<uuid>", value)


def installed_packages(root: Path) -> list[str]:
    names, package = [], None
    for line in _text(root / "var/lib/dpkg/status").splitlines():
        if line.startswith("Package: "):
            package = line.split(": ", 1)[1]
        elif line == "Status: install ok installed" and package:
            names.append(package)
    return sorted(names)


def cloud_init_config(root: Path) -> dict[str, Any] | None:
    """cloud-init's configuration as it merges it (cloud.cfg, then cloud.cfg.d/*.cfg
    in name order, later keys winning), or None without cloud-init."""
    if not (root / "usr/bin/cloud-init").exists():
        return None
    merged: dict[str, Any] = {}
    for path in [root / "etc/cloud/cloud.cfg", *sorted((root / "etc/cloud/cloud.cfg.d").glob("*.cfg"))]:
        data = yaml.safe_load(_text(path)) or {}
        for key, value in data.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged


def users(root: Path) -> dict[str, Any]:
    passwd = [line.split(":") for line in _text(root / "etc/passwd").splitlines() if line]
    shadow = {row[0]: row[1] for row in (line.split(":") for line in _text(root / "etc/shadow").splitlines() if line)}
    root_password = shadow.get("root", "")
    config = cloud_init_config(root)
    default_user = ((config or {}).get("system_info") or {}).get("default_user") or {}
    return {
        "default_user": default_user.get("name") if config is not None else None,
        "default_user_groups": sorted(default_user.get("groups") or []) if config is not None else None,
        "uid_1000_and_up": sorted(row[0] for row in passwd if len(row) > 2 and 1000 <= int(row[2]) < 65534),
        "root_login": "no password"
        if root_password == ""
        else "locked"
        if root_password[:1] in ("*", "!")
        else "password",
    }


def partition_table(device: str, sfdisk: str = "sfdisk") -> dict[str, Any]:
    """A disk's (or disk image's) partition table as sfdisk reads it: label, sector
    size, and each partition's number, start and size (sectors) and type, by start.
    proc.CommandFailed when sfdisk cannot read one."""
    table = json.loads(proc.run([sfdisk, "--json", device]))["partitiontable"]
    parts = []
    for part in table["partitions"]:
        node = re.search(r"(\d+)$", part["node"])
        if node is None:
            raise ValueError(f"sfdisk names a partition without a number: {part['node']}")
        number = int(node.group(1))
        parts.append({"number": number, "start": part["start"], "size": part["size"], "type": part["type"].upper()})
    return {
        "label": table["label"],
        "sector_size": table.get("sectorsize", 512),
        "partitions": sorted(parts, key=lambda p: p["start"]),
    }


def disk(device: str | None) -> dict[str, Any]:
    if not device:
        return {}
    if Path(device).is_file():  # a disk image
        size = Path(device).stat().st_size
    else:
        probed = subprocess.run(["blockdev", "--getsize64", device], capture_output=True, text=True, check=True)
        size = int(probed.stdout)
    return {"size": size, **partition_table(device)}


def fstab(root: Path) -> list[list[str]]:
    return [
        [_mask(field) for field in line.split()]
        for line in _text(root / "etc/fstab").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def grub(root: Path) -> dict[str, Any]:
    cfg = _text(root / "boot/grub/grub.cfg")
    cmdline = None
    for line in cfg.splitlines():
        words = line.split()
        if words and words[0] == "linux":
            cmdline = [_mask(word) for word in words[2:]]  # after the kernel's path
            break
    # The one set with the menu's style: grub.cfg also has a timeout for a boot
    # after a failed one (recordfail) and a fall-back for old GRUBs.
    timeout = re.search(r"set timeout_style=\w+\s+set timeout=(\d+)", cfg)
    return {
        "kernel_cmdline": cmdline,
        "timeout": int(timeout.group(1)) if timeout else None,
        "serial_terminal": bool(re.search(r"^\s*terminal_output .*serial", cfg, re.MULTILINE)),
    }


def _enabled(root: Path, unit: str) -> bool:
    # The links point to absolute paths, which mean the image's files, not the
    # host's: look at the links themselves.
    return any((wants / unit).is_symlink() for wants in (root / "etc/systemd/system").glob("*.wants"))


def network(root: Path, packages: set[str]) -> dict[str, Any]:
    resolv = root / "etc/resolv.conf"
    return {
        "netplan": "netplan.io" in packages,
        "ifupdown": "ifupdown" in packages,
        "systemd_networkd": _enabled(root, "systemd-networkd.service"),
        "systemd_resolved": _enabled(root, "systemd-resolved.service"),
        "resolv_conf": str(resolv.readlink()) if resolv.is_symlink() else ("file" if resolv.exists() else None),
        "netplan_files": sorted(p.name for p in (root / "etc/netplan").glob("*.yaml")),
        "nss_hosts": next(
            (
                line.split(":", 1)[1].split()
                for line in _text(root / "etc/nsswitch.conf").splitlines()
                if line.startswith("hosts:")
            ),
            [],
        ),
    }


def time_source(root: Path, packages: set[str]) -> dict[str, Any]:
    if "chrony" in packages:
        lines = [line.split() for line in _text(root / "etc/chrony/chrony.conf").splitlines()]
        return {
            "daemon": "chrony",
            "sources": [" ".join(w) for w in lines if w and w[0] in ("server", "pool", "refclock")],
        }
    if "systemd-timesyncd" in packages:
        servers = []
        for path in [root / "etc/systemd/timesyncd.conf", *sorted(root.glob("etc/systemd/timesyncd.conf.d/*.conf"))]:
            servers += [line.strip() for line in _text(path).splitlines() if re.match(r"^(Fallback)?NTP=", line)]
        return {"daemon": "systemd-timesyncd", "sources": servers}
    return {"daemon": None, "sources": []}


def apt(root: Path) -> dict[str, Any]:
    stanzas = []
    for path in sorted(root.glob("etc/apt/sources.list.d/*.sources")):
        for block in _text(path).split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != "#")
            if fields:
                stanzas.append(
                    {key.lower(): fields.get(key, "").split() for key in ("Types", "URIs", "Suites", "Components")}
                )
    one_line = [
        line.split()
        for line in _text(root / "etc/apt/sources.list").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in sorted(root.glob("etc/apt/sources.list.d/*.list")):
        one_line += [line.split() for line in _text(path).splitlines() if line.strip() and not line.startswith("#")]
    mirrors = {p.stem: _text(p).split() for p in sorted(root.glob("etc/apt/mirrors/*.list"))}
    suites = sorted({s for stanza in stanzas for s in stanza["suites"]} | {w[2] for w in one_line if len(w) > 2})
    return {
        "format": "deb822" if stanzas and not one_line else "one-line" if one_line else None,
        "sources": stanzas,
        "one_line_sources": [" ".join(w) for w in one_line],
        "mirrors": mirrors,
        "suites": suites,
    }


def ssh(root: Path, packages: set[str]) -> dict[str, Any]:
    settings: dict[str, str] = {}
    for line in _text(root / "etc/ssh/sshd_config").splitlines():
        words = line.split()
        if len(words) >= 2 and not words[0].startswith("#"):
            settings.setdefault(words[0], " ".join(words[1:]))
    return {
        "server": "openssh-server" in packages,
        "settings": {k: settings.get(k) for k in ("PasswordAuthentication", "PermitRootLogin", "ClientAliveInterval")},
    }


def cloud_release(root: Path) -> dict[str, str | None]:
    fields = dict(line.split("=", 1) for line in _text(root / "etc/cloud-release").splitlines() if "=" in line)
    return {"ID": fields.get("ID", "").strip('"'), "VERSION": "<version>" if "VERSION" in fields else None}


def measure(root: Path, disk_device: str | None = None, esp: str | None = None) -> dict[str, Any]:
    packages = installed_packages(root)
    installed = set(packages)
    config = cloud_init_config(root)
    return {
        "schema": SCHEMA,
        "packages": packages,
        "users": users(root),
        "cloud_init": None
        if config is None
        else {
            "datasource_list": config.get("datasource_list"),
            "apt_generate_mirrorlists": (config.get("apt") or {}).get("generate_mirrorlists"),
            "package_mirrors": (config.get("system_info") or {}).get("package_mirrors"),
        },
        "guest_agent": "google-guest-agent" in installed or "waagent" in installed,
        "disk": disk(disk_device),
        "fstab": fstab(root),
        "grub": grub(root),
        "kernel_links_in_root": sorted(n for n in ("vmlinuz", "initrd.img") if (root / n).is_symlink()),
        "network": network(root, installed),
        "time": time_source(root, installed),
        "apt": apt(root),
        "ssh": ssh(root, installed),
        "cloud_release": cloud_release(root),
        "hostname": _text(root / "etc/hostname").strip(),
        "locale": _text(root / "etc/default/locale").strip(),
        "modprobe_blacklist": sorted(
            line.split()[1]
            for path in sorted(root.glob("etc/modprobe.d/*.conf"))
            for line in _text(path).splitlines()
            if line.startswith("blacklist ")
        ),
        "esp_files": sorted(esp_files(esp)) if esp else [],
    }


def load(path: Path) -> dict[str, Any]:
    """A report, or one clear line when it is missing or of another schema."""
    if not path.is_file():
        raise FactsError(f"{path}: no image facts report (build the cell first: doit build:<cell>)")
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "facts" in data and "schema" in data and "artifacts" in data:
            data = data["facts"]  # a manifest: its facts
    except ValueError as error:  # not JSON, or not text
        raise FactsError(f"{path}: not an image facts report ({error})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else None
        raise FactsError(f"{path}: schema {found!r}, this version reads {SCHEMA!r}; build the cell again")
    return data


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else key))
        return flat
    return {prefix: value}


def compare(left: dict[str, Any], right: dict[str, Any]) -> list[str]:
    """Field by field, the differences; lists of names (packages, ESP files) as
    what one side has that the other lacks."""
    lines = []
    flat_left, flat_right = _flatten(left), _flatten(right)
    for key in sorted(set(flat_left) | set(flat_right)):
        a, b = flat_left.get(key), flat_right.get(key)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list) and all(isinstance(x, str) for x in a + b):
            only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
            if only_a or only_b:
                lines.append(f"{key}: only left: {', '.join(only_a) or '-'}; only right: {', '.join(only_b) or '-'}")
                continue
        lines.append(f"{key}: {json.dumps(a)} != {json.dumps(b)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        try:
            left, right = (load(Path(p)) for p in argv[1:3])
        except (FactsError, ValueError) as error:
            print(error, file=sys.stderr)
            return 2
        differences = compare(left, right)
        print("\n".join(differences) if differences else "no difference")
        return 1 if differences else 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--disk")
    parser.add_argument("--esp")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    atomic.write_json(args.output, measure(args.root, args.disk, args.esp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
