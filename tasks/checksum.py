"""Checksums of artifacts and the SHA512SUMS files that list them."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 4 << 20


def sha512_file(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def parse_sums(text: str) -> dict[str, str]:
    """name -> hex digest, from `sha512sum` output (text or binary mode)."""
    sums = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition(" ")
        sums[name.lstrip(" *")] = digest
    return sums


def format_sums(sums: dict[str, str]) -> str:
    """The format `sha512sum --check` reads, sorted by name."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))
