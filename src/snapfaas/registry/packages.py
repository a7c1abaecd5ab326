"""Code and layer packages in the snapshot store's origin: the cluster's copy of every zip.

A package is stored like a snapshot, as a manifest of chunks in the same `ChunkStore`
(512 KiB chunks, deduplicated, convergently encrypted under the deployment secret), under a
content-addressed id::

    origin/manifests/code.<sha256-hex>      one file, ``package.zip`` (mode 0600): the zip as uploaded
    origin/chunks/<name>                    its chunks, shared with snapshots and other packages

The id contains a dot, which no snapshot id has (they are ``<function>-<version>-<hex>``, and
function names hold letters, digits, ``-`` and ``_``), so the two never collide, and the store's
garbage collection treats both alike: a manifest is live while the registry references it (see
`package_ids`), and a chunk while any live manifest, snapshot or package, lists it.

Contracts:

* `put` returns only when the manifest and every chunk are at the origin (the commit point of
  an upload: any node can then `fetch` it). Putting a package that exists writes its manifest
  again (`ChunkStore.put_tree(replace=True)`): the chunks are checked and re-uploaded if lost,
  the write is fenced against a collection in this process, and the manifest's age restarts for
  collections on other hosts (their grace period).
* `fetch` materializes the package into a directory beside its destination, checks that the
  bytes hash to the digest and renames the file into place: the destination is the verified
  zip or absent.
* Collection across hosts: within one process the store's fence and `ArtifactStore.live_ids`
  make an upload safe against a concurrent collection exactly. Another host's collection sees
  an upload only through the registry and the grace period (a rewritten manifest is young), so
  it must not run with a zero grace on a shared origin; one that has already listed the origin
  when the upload rewrites an old, unreferenced package could still delete it (the same window
  as a snapshot whose chunks dedup against garbage): the cluster-wide GC lease should exclude
  uploads while a collection deletes, or the collection re-check a manifest's age before
  deleting it.
* Failures are `CodeUnavailable` (the package is missing or corrupt at the origin: permanent
  until it is uploaded again; Lambda's ``InvalidZipFileException``, HTTP 502, which is what
  Invoke answers when the deployment package cannot be unzipped) or `ServiceUnavailable`
  (the origin cannot be reached right now: HTTP 503, retryable).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

from snapfaas.errors import ServiceUnavailable, SnapfaasError
from snapfaas.store import ChunkStore, ChunkUnavailable, ManifestInvalid, OriginError, SnapshotMissing, StoreError

logger = logging.getLogger(__name__)

PREFIX = "code."
FILE_NAME = "package.zip"
DIGEST = re.compile(r"[0-9a-f]{64}")


class CodeUnavailable(SnapfaasError):
    """A function's deployment package cannot be had: missing or corrupt at the origin (and not
    in this node's cache). What Lambda answers when it cannot unzip the deployment package."""

    code = "InvalidZipFileException"
    status = 502

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing  # True: no copy exists (else: the copies are corrupt or unusable)


def package_id(digest: str) -> str:
    """The store id of package `digest` (a SHA-256 hex digest)."""
    if not DIGEST.fullmatch(digest):
        raise ValueError(f"not a package digest: {digest!r}")
    return PREFIX + digest


def digest_of(store_id: str) -> str | None:
    """The package digest of a store id, or None if the id is not a package's (a snapshot's)."""
    digest = store_id[len(PREFIX):] if store_id.startswith(PREFIX) else ""
    return digest if DIGEST.fullmatch(digest) else None


def package_ids(digests: Iterable[str]) -> set[str]:
    """The store ids of `digests` (e.g. `Registry.referenced_digests()`): what a store
    collection must count as live besides the snapshots. Anything that is not a digest is
    skipped (no package of that name can exist)."""
    return {PREFIX + digest for digest in digests if DIGEST.fullmatch(digest)}


def _unreachable(exc: StoreError) -> bool:
    """Whether `exc` comes from an origin that could not be reached (an `OriginError`, also
    when it surfaced as a chunk the store could not fetch)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OriginError):
            return True
        seen = seen.__cause__
    return False


def _failure(step: str, digest: str, exc: StoreError) -> SnapfaasError:
    """The error a caller sees for a store failure at `step` of package `digest`. The full
    message (origin location, chunk names) goes to the server log; the caller's names the
    package and what is wrong with it, no host paths."""
    logger.warning("code package store failed at step '%s' of package %s: %s", step, digest, exc.message)
    if _unreachable(exc):
        return ServiceUnavailable(f"code package store failed at step '{step}' of package {digest}: "
                                  "the store origin cannot be reached; retry later")
    if isinstance(exc, SnapshotMissing):
        return CodeUnavailable(f"Lambda could not unzip the deployment package: code package store failed at step "
                               f"'{step}' of package {digest}: it is missing from the store origin", missing=True)
    if isinstance(exc, (ManifestInvalid, ChunkUnavailable)):
        why = "it is corrupt or incomplete at the store origin"
    else:
        why = f"the store failed ({type(exc).__name__})"
    return CodeUnavailable(f"Lambda could not unzip the deployment package: code package store failed at step "
                           f"'{step}' of package {digest}: {why}")


class PackageOrigin:
    """Packages in `store`'s origin (see the module contract). Thread-safe, blocking: call it
    from worker threads."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store

    def describe(self) -> str:
        return self.store.origin.describe()

    def put(self, digest: str, staging: Path) -> None:
        """Store the package whose zip is ``staging/package.zip`` (nothing else may be in
        `staging`) durably at the origin."""
        try:
            self.store.put_tree(package_id(digest), staging, meta={"kind": "code"}, replace=True)
        except StoreError as exc:
            raise _failure("upload", digest, exc) from exc

    def exists(self, digest: str) -> bool:
        try:
            return self.store.origin.get_manifest(package_id(digest)) is not None
        except OriginError as exc:
            raise _failure("look up", digest, exc) from exc

    def stored(self) -> set[str]:
        """Digests of every package at the origin."""
        try:
            listed = self.store.snapshots()
        except OriginError as exc:
            raise ServiceUnavailable(f"code package store failed at step 'list packages': {exc.message}") from exc
        return {digest for digest in map(digest_of, listed) if digest is not None}

    def fetch(self, digest: str, dest: Path) -> None:
        """Materialize package `digest` at `dest` (a file path; absent before, the verified zip
        after, or absent if this raises)."""
        staging = dest.with_name(f".fetch-{digest}-{secrets.token_hex(4)}")
        try:
            self.store.materialize(package_id(digest), staging)
            data_path = staging / FILE_NAME
            try:
                found = _sha256_of(data_path)
            except FileNotFoundError:
                raise CodeUnavailable(f"Lambda could not unzip the deployment package: code package store failed at "
                                      f"step 'verify' of package {digest}: its manifest holds no {FILE_NAME}") from None
            if found != digest:
                raise CodeUnavailable(f"Lambda could not unzip the deployment package: code package store failed at "
                                      f"step 'verify' of package {digest}: the fetched bytes hash to {found}")
            os.chmod(data_path, 0o600)
            os.replace(data_path, dest)
        except StoreError as exc:
            raise _failure("fetch", digest, exc) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
