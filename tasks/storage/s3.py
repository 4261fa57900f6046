"""Storage in S3 or an S3-compatible service (s3://bucket/prefix URLs), through boto3.

Credentials and endpoint come from boto3's usual places: the environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_ENDPOINT_URL for
a service other than AWS), ~/.aws/credentials and ~/.aws/config. A "move" is
a server-side copy and a delete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from tasks.progress import StageProgress
from tasks.storage.backend import CHUNK, Backend, PublishFailed, Transient

_CREDENTIAL_ERRORS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
                      "InvalidToken", "AuthorizationHeaderMalformed"}


class S3Backend(Backend):
    def __init__(self, bucket: str, prefix: str):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.name = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        # botocore retries throttling and 5xx itself; ours retries the rest.
        self.client = boto3.client("s3", config=botocore.config.Config(
            retries={"mode": "standard", "max_attempts": 3}, connect_timeout=10, read_timeout=300))

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def _call(self, what: str, fn: Callable, *args, missing_ok: bool = False, **kwargs):
        try:
            return fn(*args, **kwargs)
        except botocore.exceptions.ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if missing_ok and (status == 404 or code in ("NoSuchKey", "NotFound", "404")):
                return None
            if code in _CREDENTIAL_ERRORS or status == 403:
                raise PublishFailed(f"{self.name} refused the credentials ({what}: {code}); see AWS_ACCESS_KEY_ID, "
                                    f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials") from None
            if code == "NoSuchBucket":
                raise PublishFailed(f"{self.name}: the bucket {self.bucket} does not exist") from None
            if status >= 500:
                raise Transient(f"{what}: {code or status}") from None
            raise PublishFailed(f"{self.name}: {what}: {code or status}") from None
        except botocore.exceptions.NoCredentialsError:
            raise PublishFailed(f"{self.name}: no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                                f"or AWS_PROFILE)") from None
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError,
                botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectTimeoutError) as error:
            raise Transient(f"{what}: {type(error).__name__}") from None

    def size(self, path: str) -> int | None:
        head = self._call(f"HEAD {path}", self.client.head_object, Bucket=self.bucket, Key=self._key(path),
                          missing_ok=True)
        return head["ContentLength"] if head else None

    def read_text(self, path: str) -> str | None:
        obj = self._call(f"GET {path}", self.client.get_object, Bucket=self.bucket, Key=self._key(path),
                         missing_ok=True)
        return obj["Body"].read().decode() if obj else None

    def upload(self, local: Path, path: str, progress: StageProgress) -> None:
        self._call(f"PUT {path}", self.client.upload_file, str(local), self.bucket, self._key(path),
                   Callback=lambda sent: progress.update(advance=sent),
                   Config=TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20))

    def put_bytes(self, path: str, data: bytes) -> None:
        self._call(f"PUT {path}", self.client.put_object, Bucket=self.bucket, Key=self._key(path), Body=data)

    def download(self, path: str, sink: Callable[[bytes], None]) -> None:
        obj = self._call(f"GET {path}", self.client.get_object, Bucket=self.bucket, Key=self._key(path))
        try:
            for chunk in obj["Body"].iter_chunks(CHUNK):
                sink(chunk)
        except (botocore.exceptions.ReadTimeoutError, botocore.exceptions.ResponseStreamingError) as error:
            raise Transient(f"GET {path}: {type(error).__name__}") from None

    def move(self, source: str, target: str) -> None:
        self._call(f"COPY {source}", self.client.copy, {"Bucket": self.bucket, "Key": self._key(source)},
                   self.bucket, self._key(target))
        self.delete(source)

    def delete(self, path: str) -> None:
        self._call(f"DELETE {path}", self.client.delete_object, Bucket=self.bucket, Key=self._key(path),
                   missing_ok=True)

    def _keys_under(self, path: str) -> list[str]:
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(path.rstrip("/") + "/")):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def delete_dir(self, path: str) -> None:
        keys = self._call(f"LIST {path}", self._keys_under, path)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start:start + 1000]]
            self._call(f"DELETE {path}", self.client.delete_objects, Bucket=self.bucket,
                       Delete={"Objects": batch, "Quiet": True})

    def list_dirs(self, path: str) -> list[str]:
        prefix = self._key(path.rstrip("/") + "/") if path else (self.prefix + "/" if self.prefix else "")

        def collect() -> list[str]:
            names = []
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                names += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
            return sorted(n for n in names if n and not n.startswith("."))

        return self._call(f"LIST {path}", collect)
