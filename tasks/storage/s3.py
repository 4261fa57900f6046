"""Storage in S3 or an S3-compatible service (s3://bucket/prefix URLs), through boto3.

Credentials and endpoint come from boto3's usual places: the environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_ENDPOINT_URL for
a service other than AWS), ~/.aws/credentials and ~/.aws/config.

An object appears only once it is complete (PutObject, CompleteMultipartUpload),
so files are written to their own key, with the CRC32 of their whole content
(an S3 "full object" checksum, multipart uploads included): S3 refuses bytes
that do not match it and keeps it with the object. Whether a published object
is still the file meant is then a HEAD away (``holds``); an object without
such a checksum (written by something else) is read back instead.

The storage lock is the object <prefix>/.lock, made with If-None-Match: *
(S3's conditional writes; MinIO and Ceph have them too), renewed with
If-Match on its ETag and deleted with If-Match. A waiting writer that sees
the same ETag for a whole lease takes it over, with If-Match: its writer is gone.
"""

from __future__ import annotations

import posixpath
import random
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from tasks.progress import StageProgress
from tasks.storage.backend import (
    CHUNK,
    LOCK_NAME,
    Backend,
    Holder,
    Lease,
    LockLost,
    PublishFailed,
    Transient,
    wait_announced,
)
from tasks.system.checksum import crc32_and_sha512

_CREDENTIAL_ERRORS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "AuthorizationHeaderMalformed",
}
# A conditional write that lost: the precondition failed, or a concurrent one won.
_CONDITION_FAILED = {"PreconditionFailed", "ConditionalRequestConflict"}
PART_SIZE = 64 << 20  # parts of a multipart upload, and the size from which one is used


class _ConditionFailed(Exception):
    pass


class S3Backend(Backend):
    def __init__(self, bucket: str, prefix: str):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.name = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        # botocore retries throttling and 5xx itself; ours retries the rest.
        self.client = boto3.client(
            "s3",
            config=botocore.config.Config(
                retries={"mode": "standard", "max_attempts": 3}, connect_timeout=10, read_timeout=300
            ),
        )

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def _call(self, what: str, fn: Callable, *args, missing_ok: bool = False, conditional: bool = False, **kwargs):
        try:
            return fn(*args, **kwargs)
        except botocore.exceptions.ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if missing_ok and (status == 404 or code in ("NoSuchKey", "NotFound", "404")):
                return None
            if conditional and (code in _CONDITION_FAILED or status in (409, 412)):
                raise _ConditionFailed(code) from None
            if code in _CREDENTIAL_ERRORS or status == 403:
                raise PublishFailed(
                    f"{self.name} refused the credentials ({what}: {code}); see AWS_ACCESS_KEY_ID, "
                    f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials"
                ) from None
            if code == "NoSuchBucket":
                raise PublishFailed(f"{self.name}: the bucket {self.bucket} does not exist") from None
            if status >= 500:
                raise Transient(f"{what}: {code or status}") from None
            raise PublishFailed(f"{self.name}: {what}: {code or status}") from None
        except botocore.exceptions.NoCredentialsError:
            raise PublishFailed(
                f"{self.name}: no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
            ) from None
        except (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError,
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.ConnectTimeoutError,
        ) as error:
            raise Transient(f"{what}: {type(error).__name__}") from None

    def _head(self, path: str) -> dict | None:
        return self._call(
            f"HEAD {path}",
            self.client.head_object,
            Bucket=self.bucket,
            Key=self._key(path),
            ChecksumMode="ENABLED",
            missing_ok=True,
        )

    def size(self, path: str) -> int | None:
        head = self._head(path)
        return head["ContentLength"] if head else None

    def stored_crc32(self, path: str) -> tuple[int, str | None] | None:
        """The object's size and the CRC32 S3 keeps of its whole content (None when it keeps none); None: no object."""
        head = self.retry.run(f"checking {path} in {self.name}", lambda: self._head(path))
        if head is None:
            return None
        whole = head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT"
        return head["ContentLength"], head.get("ChecksumCRC32") if whole else None

    def read_text(self, path: str) -> str | None:
        obj = self._call(
            f"GET {path}", self.client.get_object, Bucket=self.bucket, Key=self._key(path), missing_ok=True
        )
        return obj["Body"].read().decode(errors="replace") if obj else None

    def upload(self, local: Path, path: str, progress: StageProgress, crc32: str | None = None) -> None:
        size = local.stat().st_size
        # Single PUTs: botocore computes the CRC32 it sends; multipart: the whole file's, which S3 checks
        # the parts against (a "full object" checksum).
        if size >= PART_SIZE:
            checksum = {"ChecksumCRC32": crc32 or crc32_and_sha512(local)[0]}
        else:
            checksum = {"ChecksumAlgorithm": "CRC32"}
        self._call(
            f"PUT {path}",
            self.client.upload_file,
            str(local),
            self.bucket,
            self._key(path),
            ExtraArgs=checksum,
            Callback=lambda sent: progress.update(advance=sent),
            Config=TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE),
        )

    def put_bytes(self, path: str, data: bytes) -> None:
        self._call(
            f"PUT {path}",
            self.client.put_object,
            Bucket=self.bucket,
            Key=self._key(path),
            Body=data,
            ChecksumAlgorithm="CRC32",
        )

    def download(self, path: str, sink: Callable[[bytes], None]) -> None:
        obj = self._call(f"GET {path}", self.client.get_object, Bucket=self.bucket, Key=self._key(path))
        try:
            for chunk in obj["Body"].iter_chunks(CHUNK):
                sink(chunk)
        except (botocore.exceptions.ReadTimeoutError, botocore.exceptions.ResponseStreamingError) as error:
            raise Transient(f"GET {path}: {type(error).__name__}") from None

    def delete(self, path: str) -> None:
        self._call(
            f"DELETE {path}", self.client.delete_object, Bucket=self.bucket, Key=self._key(path), missing_ok=True
        )

    def _keys_under(self, path: str) -> list[str]:
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(path.rstrip("/") + "/")
        ):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def delete_dir(self, path: str) -> None:
        keys = self._call(f"LIST {path}", self._keys_under, path)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self._call(
                f"DELETE {path}",
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )

    def list_dirs(self, path: str) -> list[str]:
        prefix = self._key(path.rstrip("/") + "/") if path else (self.prefix + "/" if self.prefix else "")

        def collect() -> list[str]:
            names = []
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            ):
                names += [p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
            return sorted(n for n in names if n and not n.startswith("."))

        return self._call(f"LIST {path}", collect)

    # --- what the shared discipline does differently here ------------------
    def put_verified(self, local: Path, path: str, sha512: str, label: str) -> None:
        """Upload to path itself (an object appears whole or not at all), then check S3 kept our checksum."""
        self._check_lock()
        name = posixpath.basename(path)
        expected, (crc, digest) = local.stat().st_size, crc32_and_sha512(local)
        if digest != sha512:
            raise PublishFailed(
                f"{name}: the local file differs from the one described ({local}: SHA-512 {digest[:16]}…, "
                f"expected {sha512[:16]}…)"
            )

        def attempt() -> None:
            with StageProgress(label, total=expected) as progress:
                self.upload(local, path, progress, crc)

        self.retry.run(f"uploading {posixpath.basename(path)} to {self.name}", attempt)
        stored = self.stored_crc32(path)
        if stored != (expected, crc):
            raise PublishFailed(
                f"{posixpath.basename(path)} in {self.name} differs from the local file after upload "
                f"(size and CRC32 {stored}, expected {(expected, crc)})"
            )

    def put_text_atomically(self, path: str, text: str) -> None:
        self._check_lock()
        data = text.encode()
        self.retry.run(f"writing {posixpath.basename(path)} to {self.name}", lambda: self.put_bytes(path, data))

    def holds(self, path: str, local: Path, sha512: str) -> bool:
        stored = self.stored_crc32(path)
        if stored is None or stored[0] != local.stat().st_size:
            return False
        if stored[1] is not None:
            return (stored[1], sha512) == crc32_and_sha512(local)  # S3's CRC32 is of local's bytes, which are these
        return super().holds(path, local, sha512)  # no checksum of S3's own: read it back

    # --- the storage lock ---------------------------------------------------
    def acquire(self, holder: Holder) -> Lease:
        key = self._key(LOCK_NAME)
        body = holder.to_bytes(renewal=0)
        seen: tuple[str, float] | None = None  # the holder's ETag, and since when (our clock) it has not changed
        announced = False
        while True:
            try:
                made = self.retry.run(
                    f"taking the lock of {self.name}",
                    lambda: self._call(
                        "PUT .lock",
                        self.client.put_object,
                        Bucket=self.bucket,
                        Key=key,
                        Body=body,
                        IfNoneMatch="*",
                        conditional=True,
                    ),
                )
                return self._held_lock(key, holder, made["ETag"])
            except _ConditionFailed:
                pass
            head = self.retry.run(
                f"reading the lock of {self.name}",
                lambda: self._call("HEAD .lock", self.client.head_object, Bucket=self.bucket, Key=key, missing_ok=True),
            )
            if head is None:
                continue  # released meanwhile
            etag = head["ETag"]
            if seen is None or seen[0] != etag:
                seen = (etag, time.monotonic())
            elif time.monotonic() - seen[1] > self.lease_seconds:
                # Not renewed for a whole lease: its writer is gone. Taken over only if it is still that lock.
                try:
                    made = self._call(
                        "PUT .lock",
                        self.client.put_object,
                        Bucket=self.bucket,
                        Key=key,
                        Body=body,
                        IfMatch=etag,
                        conditional=True,
                    )
                except _ConditionFailed:
                    continue
                print(f"{self.name}: took over a storage lock not renewed for {self.lease_seconds:.0f} s", flush=True)
                return self._held_lock(key, holder, made["ETag"])
            if not announced:
                current = self._call("GET .lock", self.client.get_object, Bucket=self.bucket, Key=key, missing_ok=True)
                wait_announced(self.name, Holder.describe(current["Body"].read() if current else None))
                announced = True
            time.sleep(random.uniform(0.1, 0.4))

    def _held_lock(self, key: str, holder: Holder, etag: str) -> Lease:
        held = [etag]
        renewals = [0]

        def renew() -> None:
            # New content each time, so a new ETag: the mark of a live holder that waiting writers watch.
            renewals[0] += 1
            try:
                held[0] = self._call(
                    "PUT .lock",
                    self.client.put_object,
                    Bucket=self.bucket,
                    Key=key,
                    Body=holder.to_bytes(renewal=renewals[0]),
                    IfMatch=held[0],
                    conditional=True,
                )["ETag"]
            except _ConditionFailed:
                raise LockLost("another writer took it over") from None

        def release() -> None:
            try:
                self._call(
                    "DELETE .lock",
                    self.client.delete_object,
                    Bucket=self.bucket,
                    Key=key,
                    IfMatch=held[0],
                    conditional=True,
                    missing_ok=True,
                )
            except _ConditionFailed:
                pass  # taken over meanwhile: it is another writer's now

        return Lease(self.name, renew, release, self.lease_seconds)
