"""Platform uploads for the release step: one module per cloud.

Each module has `upload(cell, image, manifest, settings) -> dict`: it puts the
image on the platform and registers it there, and returns what it made
(identifiers a person or a later step needs). `image` is the raw disk;
`settings` is the platform's entry of matrix.yaml's release.platforms.
"""

from __future__ import annotations

from collections.abc import Callable

from tasks.release.platforms import azure, ec2, gce

UPLOADERS: dict[str, Callable] = {"ec2": ec2.upload, "azure": azure.upload, "gce": gce.upload}
