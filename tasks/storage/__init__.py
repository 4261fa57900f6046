"""Storage as transport only: put, read, list, move and delete files in a
directory, over WebDAV or in S3 (backend.py and its subclasses).

What is published where (daily and release directories, SHA512SUMS,
``latest``) is the publish stage's business: tasks/stages/publish.py.
"""

from tasks.storage.backend import Backend, PublishFailed, RetryPolicy
from tasks.storage.location import Location

__all__ = ["Backend", "Location", "PublishFailed", "RetryPolicy"]
