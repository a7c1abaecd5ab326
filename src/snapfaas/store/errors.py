"""Errors of the snapshot store. Every message names the step that failed.

`StoreError` is a `snapfaas.errors.ServiceError` leaf (HTTP 500, "Service"): a snapshot that
cannot be read is the platform's fault, never the caller's. `ChunkCorrupt` is internal to the
store (a single blob failed verification at one tier) and never escapes `ChunkStore`: a cache
tier's corrupt blob is evicted and re-read from below, the origin's becomes `ChunkUnavailable`.
"""

from __future__ import annotations

from snapfaas.errors import ServiceError


class StoreError(ServiceError):
    """A store operation failed; the message says "... failed at step '<step>': ..."."""


class ManifestInvalid(StoreError):
    """A manifest failed its checksum, authentication or structural checks."""


class SnapshotMissing(StoreError):
    """No manifest exists for the snapshot id."""


class SnapshotExists(StoreError):
    """`put_tree` was asked to write a snapshot id that already has a manifest."""


class ChunkUnavailable(StoreError):
    """A chunk a snapshot needs is missing or corrupt at the origin (or the origin failed).

    Attributes name the snapshot, the file, the chunk's index and offset in that file and the
    chunk's name, so the caller can fail the restore and have the version re-snapshot itself.
    """

    def __init__(self, message: str, snapshot_id: str, path: str, index: int, offset: int, name: str) -> None:
        super().__init__(message)
        self.snapshot_id = snapshot_id
        self.path = path
        self.index = index
        self.offset = offset
        self.name = name


class ChunkCorrupt(ValueError):
    """One stored chunk blob failed verification (header, AEAD tag, length, hash or name)."""
