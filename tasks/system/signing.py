"""The OpenPGP key that signs what is published: SHA512SUMS and the provenance.

The key comes from the environment, never from matrix.yaml:

    IMAGES_SIGNING_KEY          a file with the secret key, armored or not
                                (gpg --export-secret-keys --armor <fingerprint>);
                                in CI a protected file variable
    IMAGES_SIGNING_FINGERPRINT  the fingerprint of the key (or subkey) expected to sign

A key that is missing, unreadable, expired, revoked, unable to sign or of
another fingerprint is one clear error. Signing runs GnuPG in a home of its
own (created and removed here, agent included), so the user's keyrings play
no part. The provenance's DSSE envelope is signed through securesystemslib's
GPGSigner with the same key; both verify with a public key alone (`doit
verify`, or gpgv as docs/storage.md shows).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import StageFailed

KEY_ENV = "IMAGES_SIGNING_KEY"
FINGERPRINT_ENV = "IMAGES_SIGNING_FINGERPRINT"
SIGNATURE_SUFFIX = ".asc"  # SHA512SUMS.asc: detached, armored
_FINGERPRINT = re.compile(r"^(?:[0-9A-F]{40}|[0-9A-F]{64})$")


class SigningError(StageFailed):
    pass


@dataclass(frozen=True)
class KeyConfig:
    """Which key signs: read from the environment."""

    key_file: Path
    fingerprint: str

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> KeyConfig | None:
        """The configured key, or None when neither variable is set."""
        key, fingerprint = env.get(KEY_ENV, ""), env.get(FINGERPRINT_ENV, "")
        if not key and not fingerprint:
            return None
        if not key:
            raise SigningError(f"{FINGERPRINT_ENV} is set but {KEY_ENV} is not: set it to the secret key's file")
        if not fingerprint:
            raise SigningError(f"{KEY_ENV} is set but {FINGERPRINT_ENV} is not: set it to the key's fingerprint")
        normal = fingerprint.replace(" ", "").upper()
        if not _FINGERPRINT.match(normal):
            raise SigningError(f"{FINGERPRINT_ENV}: expected 40 or 64 hexadecimal digits, got {fingerprint!r}")
        path = Path(key)
        if not path.is_file():
            raise SigningError(f"{KEY_ENV}: {path} is not a file (export the secret key: gpg --export-secret-keys)")
        return cls(path, normal)


def _gpg(home: Path, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--quiet", *args],
        input=data,
        capture_output=True,
    )


@contextlib.contextmanager
def gnupg_home() -> Iterator[Path]:
    """A GnuPG home of our own; its agent is stopped and the home removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="images-gpg-"))  # short: the agent's socket path is limited
    try:
        yield home
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@dataclass(frozen=True)
class Signer:
    """A checked key in a GnuPG home: signs detached signatures and DSSE envelopes."""

    home: Path
    fingerprint: str

    def _sign(self, data: bytes, *how: str) -> bytes:
        result = _gpg(self.home, "--local-user", self.fingerprint + "!", *how, "--output", "-", data=data)
        if result.returncode != 0:
            raise SigningError(f"signing with {self.fingerprint} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout

    def sign_detached(self, data: bytes) -> bytes:
        return self._sign(data, "--armor", "--detach-sign")

    def clearsign(self, data: bytes) -> bytes:
        """data with its signature around it, as gpg --clearsign writes it (simplestreams' .sjson)."""
        return self._sign(data, "--clearsign")

    def sign_envelope(self, payload: bytes, payload_type: str) -> dict:
        from securesystemslib.dsse import Envelope
        from securesystemslib.signer import GPGSigner

        _, public_key = GPGSigner.import_(self.fingerprint.lower(), str(self.home))
        envelope = Envelope(payload, payload_type, {})
        envelope.sign(GPGSigner(public_key, str(self.home)))
        return envelope.to_dict()


class Unsigned:
    """What is published without a key: a DSSE envelope with no signature."""

    fingerprint = None

    def sign_envelope(self, payload: bytes, payload_type: str) -> dict:
        return {"payload": base64.b64encode(payload).decode(), "payloadType": payload_type, "signatures": []}


def envelope_holds(path: Path, payload: bytes, signer: Signer | None) -> bool:
    """Whether the envelope at path already wraps payload, signed as signer would
    (or unsigned when there is none): publishing again then signs nothing anew,
    and the published envelope stays the same file."""
    try:
        envelope = json.loads(path.read_bytes())
        keyids = {s.get("keyid") for s in envelope.get("signatures", [])}
    except (OSError, ValueError, AttributeError, TypeError):
        return False  # missing or damaged: made again
    expected = {signer.fingerprint.lower()} if signer else set()
    return envelope.get("payload") == base64.b64encode(payload).decode() and keyids == expected


def check_key(home: Path, fingerprint: str, source: Path, now: float | None = None) -> None:
    """The key with this fingerprint is in home, valid today and able to sign."""
    listing = _gpg(home, "--with-colons", "--fixed-list-mode", "--list-secret-keys").stdout.decode()
    found: dict[str, list[str]] = {}  # fingerprint -> the fields of its sec or ssb line
    current = None
    for fields in (line.split(":") for line in listing.splitlines()):
        if fields[0] in ("sec", "ssb"):
            current = fields
        elif fields[0] == "fpr" and current is not None:
            found[fields[9]] = current
            current = None
    if fingerprint not in found:
        listed = ", ".join(found) or "no secret key"
        raise SigningError(f"{KEY_ENV} ({source}) holds {listed}, not {FINGERPRINT_ENV}={fingerprint}")
    key = found[fingerprint]
    validity, expires, capabilities = key[1], key[6], key[11]
    if validity == "r":
        raise SigningError(f"the signing key {fingerprint} is revoked")
    if validity == "e" or (expires and int(expires) <= (now or time.time())):
        when = time.strftime("%Y-%m-%d", time.gmtime(int(expires))) if expires else "already"
        raise SigningError(f"the signing key {fingerprint} expired ({when}): extend it or configure another")
    if "s" not in capabilities.lower():
        raise SigningError(f"the key {fingerprint} cannot sign ({capabilities!r}): name its signing subkey")


@contextlib.contextmanager
def signer(config: KeyConfig) -> Iterator[Signer]:
    """Import the configured key into a home of our own and check it."""
    with gnupg_home() as home:
        imported = _gpg(home, "--import", str(config.key_file))
        if imported.returncode != 0:
            message = imported.stderr.decode(errors="replace").strip().splitlines()
            raise SigningError(f"{KEY_ENV}: {config.key_file} holds no usable OpenPGP key: {' '.join(message[-2:])}")
        check_key(home, config.fingerprint, config.key_file)
        yield Signer(home, config.fingerprint)


@contextlib.contextmanager
def configured_signer(env: Mapping[str, str] = os.environ) -> Iterator[Signer | None]:
    """The environment's signer, or None when no key is configured."""
    config = KeyConfig.from_environment(env)
    if config is None:
        yield None
        return
    with signer(config) as made:
        yield made


# --------------------------------------------------------------------------
# Verification: with a public key alone, as a user would


@contextlib.contextmanager
def public_keyring(public_key: Path) -> Iterator[Path]:
    """A binary keyring (what gpgv reads) made from an armored or binary public key."""
    with gnupg_home() as home:
        result = _gpg(home, "--import", str(public_key))
        if result.returncode != 0:
            raise SigningError(f"{public_key}: not an OpenPGP public key")
        keyring = home / "trusted.gpg"
        keyring.write_bytes(_gpg(home, "--export").stdout)
        yield keyring


def verify_detached(keyring: Path, signature: Path, data: Path) -> str | None:
    """None when gpgv accepts the signature, else what gpgv said."""
    result = subprocess.run(
        ["gpgv", "--keyring", str(keyring), str(signature), str(data)], capture_output=True, text=True
    )
    return None if result.returncode == 0 else result.stderr.strip()


def verify_envelope(envelope: dict, keyring: Path) -> bytes:
    """The payload of a DSSE envelope signed by a key of the keyring; SigningError otherwise."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError
    from securesystemslib.signer import GPGSigner

    try:
        parsed = Envelope.from_dict(envelope)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise SigningError(f"the provenance is not a DSSE envelope ({type(error).__name__}: {error})") from None
    if not parsed.signatures:
        raise SigningError("the provenance envelope is unsigned (published without a key)")
    keys = []
    with gnupg_home() as home:
        _gpg(home, "--import", str(keyring))
        for keyid in parsed.signatures:
            with contextlib.suppress(ValueError):
                keys.append(GPGSigner.import_(keyid, str(home))[1])
    if not keys:
        raise SigningError(f"the provenance is signed by {', '.join(parsed.signatures)}: not a key of {keyring}")
    try:
        parsed.verify(keys, 1)
    except VerificationError as error:
        raise SigningError(f"the provenance's signature does not verify: {error}") from error
    return parsed.payload
