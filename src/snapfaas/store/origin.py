"""Origins: where chunks and manifests live for good. A directory (embedded, one machine; the
default) or an S3-compatible bucket (through boto3; several hosts).

Layout, identical in both (``<root>`` is the directory or ``s3://bucket/prefix``)::

    <root>/chunks/<name>                sealed chunk blobs (see `codec`); the directory
                                        origin fans them out: chunks/<name[0:2]>/<name>
    <root>/manifests/<snapshot-id>      manifest envelopes (see `manifest`)
    <root>/attachments/<snapshot-id>/<name>
                                        attachment envelopes (see `attachment`): a
                                        snapshot's named documents, e.g. ``workingset``

Chunks and manifests are written once; an attachment may be overwritten (the last writer
wins: the new object replaces the old one whole).

Every write is atomic: the directory origin writes a unique temporary sibling, fsyncs and renames
it into place; an S3 PUT is atomic by itself. Reads return ``None`` for a missing object;
anything else that goes wrong (permissions, network, throttling past boto3's retries) raises
`OriginError` naming the step. Origins hold no locks and are safe to share between threads
(boto3 clients are thread-safe; sessions are not, so one is used once, at construction).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from snapfaas.store.errors import StoreError

logger = logging.getLogger(__name__)


class OriginError(StoreError):
    """The origin failed an operation (not a missing object: that is ``None``)."""


@dataclasses.dataclass(frozen=True)
class AttachmentInfo:
    """A listed attachment: the snapshot it belongs to, its name, size and age (epoch s)."""

    snapshot_id: str
    name: str
    size: int
    mtime: float


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """A listed chunk or manifest: its key (name or snapshot id), size and age (epoch s)."""

    key: str
    size: int
    mtime: float


class Origin(Protocol):
    def describe(self) -> str: ...
    def get_chunk(self, name: str) -> bytes | None: ...
    def has_chunk(self, name: str) -> bool: ...
    def put_chunk(self, name: str, blob: bytes) -> None: ...
    def delete_chunk(self, name: str) -> None: ...
    def list_chunks(self) -> Iterator[ObjectInfo]: ...
    def get_manifest(self, snapshot_id: str) -> bytes | None: ...
    def put_manifest(self, snapshot_id: str, data: bytes) -> None: ...
    def delete_manifest(self, snapshot_id: str) -> None: ...
    def list_manifests(self) -> Iterator[ObjectInfo]: ...
    def get_attachment(self, snapshot_id: str, name: str) -> bytes | None: ...
    def put_attachment(self, snapshot_id: str, name: str, data: bytes) -> None: ...
    def delete_attachment(self, snapshot_id: str, name: str) -> None: ...
    def list_attachments(self, snapshot_id: str | None = None) -> Iterator[AttachmentInfo]: ...


def write_atomic(path: Path, data: bytes) -> None:
    """Unique temporary sibling (concurrent writers of one path never share it), fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DirectoryOrigin:
    """The origin as a local directory (created 0700)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.chunks = root / "chunks"
        self.manifests = root / "manifests"
        self.attachments = root / "attachments"
        for directory in (root, self.chunks, self.manifests, self.attachments):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def describe(self) -> str:
        return str(self.root)

    def _chunk(self, name: str) -> Path:
        return self.chunks / name[:2] / name

    def _io(self, step: str, exc: OSError) -> OriginError:
        return OriginError(f"snapshot store failed at step '{step}' at origin {self.root}: {exc}")

    def _reachable(self, step: str) -> None:
        """A missing origin directory (removed, or its filesystem not mounted) is an unreachable
        origin, not an empty one."""
        if not self.manifests.is_dir() or not self.chunks.is_dir():
            raise OriginError(f"snapshot store failed at step '{step}' at origin {self.root}: the origin directory is gone")

    def get_chunk(self, name: str) -> bytes | None:
        try:
            return self._chunk(name).read_bytes()
        except FileNotFoundError:
            self._reachable("read chunk")
            return None
        except OSError as exc:
            raise self._io("read chunk", exc) from exc

    def has_chunk(self, name: str) -> bool:
        return self._chunk(name).is_file()

    def put_chunk(self, name: str, blob: bytes) -> None:
        try:
            write_atomic(self._chunk(name), blob)
        except OSError as exc:
            raise self._io("write chunk", exc) from exc

    def delete_chunk(self, name: str) -> None:
        self._chunk(name).unlink(missing_ok=True)

    def list_chunks(self) -> Iterator[ObjectInfo]:
        for sub in sorted(self.chunks.iterdir()):
            if not sub.is_dir():
                continue
            for path in sub.iterdir():
                if ".tmp" in path.name:
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # deleted while listing
                yield ObjectInfo(path.name, st.st_size, st.st_mtime)

    def get_manifest(self, snapshot_id: str) -> bytes | None:
        try:
            return (self.manifests / snapshot_id).read_bytes()
        except FileNotFoundError:
            self._reachable("read manifest")
            return None
        except OSError as exc:
            raise self._io("read manifest", exc) from exc

    def put_manifest(self, snapshot_id: str, data: bytes) -> None:
        try:
            write_atomic(self.manifests / snapshot_id, data)
        except OSError as exc:
            raise self._io("write manifest", exc) from exc

    def delete_manifest(self, snapshot_id: str) -> None:
        (self.manifests / snapshot_id).unlink(missing_ok=True)

    def list_manifests(self) -> Iterator[ObjectInfo]:
        self._reachable("list manifests")  # a missing directory must never read as "no manifests"
        for path, st in _stored_files(self.manifests):
            yield ObjectInfo(path.name, st.st_size, st.st_mtime)

    def get_attachment(self, snapshot_id: str, name: str) -> bytes | None:
        try:
            return (self.attachments / snapshot_id / name).read_bytes()
        except FileNotFoundError:
            self._reachable("read attachment")
            return None
        except OSError as exc:
            raise self._io("read attachment", exc) from exc

    def put_attachment(self, snapshot_id: str, name: str, data: bytes) -> None:
        path = self.attachments / snapshot_id / name
        for attempt in range(2):
            try:
                write_atomic(path, data)
                return
            except FileNotFoundError as exc:  # a concurrent delete removed the (empty) directory
                if attempt:
                    raise self._io("write attachment", exc) from exc
            except OSError as exc:
                raise self._io("write attachment", exc) from exc

    def delete_attachment(self, snapshot_id: str, name: str) -> None:
        directory = self.attachments / snapshot_id
        (directory / name).unlink(missing_ok=True)
        try:
            directory.rmdir()  # only once empty
        except OSError:
            pass  # other attachments (or a write in progress) remain, or it is gone already

    def list_attachments(self, snapshot_id: str | None = None) -> Iterator[AttachmentInfo]:
        if snapshot_id is not None:
            directories = [self.attachments / snapshot_id]
        elif self.attachments.is_dir():
            directories = sorted(self.attachments.iterdir())
        else:
            self._reachable("list attachments")
            directories = []
        for directory in directories:
            for path, st in _stored_files(directory):
                yield AttachmentInfo(directory.name, path.name, st.st_size, st.st_mtime)


class S3Origin:
    """The origin as ``s3://bucket/prefix`` on any S3-compatible service.

    Credentials and region come from boto3's standard chain (``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE`` / config files); `endpoint_url` points at a
    non-AWS service (path-style addressing is used then). Pass `client` to reuse one.
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        if client is None:
            config = Config(retries={"max_attempts": 5, "mode": "standard"},
                            s3={"addressing_style": "path"} if endpoint_url else None)
            import boto3  # the S3 origin only: a daemon with a directory origin never loads boto3 (~0.15 s CPU per start)
            client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
        self.client = client

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}/{kind}/{key}" if self.prefix else f"{kind}/{key}"

    def _fail(self, step: str, exc: Exception) -> OriginError:
        return OriginError(f"snapshot store failed at step '{step}' at origin {self.describe()}: {exc}")

    def _get(self, step: str, key: str) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return bytes(response["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._fail(step, exc) from exc
        except BotoCoreError as exc:
            raise self._fail(step, exc) from exc

    def _put(self, step: str, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(step, exc) from exc

    def _delete(self, step: str, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(step, exc) from exc

    def _list(self, step: str, kind: str) -> Iterator[ObjectInfo]:
        start = self._key(kind, "")
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(start):]
                    if key and "/" not in key:
                        yield ObjectInfo(key, int(item["Size"]), item["LastModified"].timestamp())
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(step, exc) from exc

    def get_chunk(self, name: str) -> bytes | None:
        return self._get("read chunk", self._key("chunks", name))

    def has_chunk(self, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key("chunks", name))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise self._fail("look up chunk", exc) from exc
        except BotoCoreError as exc:
            raise self._fail("look up chunk", exc) from exc

    def put_chunk(self, name: str, blob: bytes) -> None:
        self._put("write chunk", self._key("chunks", name), blob)

    def delete_chunk(self, name: str) -> None:
        self._delete("delete chunk", self._key("chunks", name))

    def list_chunks(self) -> Iterator[ObjectInfo]:
        return self._list("list chunks", "chunks")

    def get_manifest(self, snapshot_id: str) -> bytes | None:
        return self._get("read manifest", self._key("manifests", snapshot_id))

    def put_manifest(self, snapshot_id: str, data: bytes) -> None:
        self._put("write manifest", self._key("manifests", snapshot_id), data)

    def delete_manifest(self, snapshot_id: str) -> None:
        self._delete("delete manifest", self._key("manifests", snapshot_id))

    def list_manifests(self) -> Iterator[ObjectInfo]:
        return self._list("list manifests", "manifests")

    def get_attachment(self, snapshot_id: str, name: str) -> bytes | None:
        return self._get("read attachment", self._key("attachments", f"{snapshot_id}/{name}"))

    def put_attachment(self, snapshot_id: str, name: str, data: bytes) -> None:
        self._put("write attachment", self._key("attachments", f"{snapshot_id}/{name}"), data)

    def delete_attachment(self, snapshot_id: str, name: str) -> None:
        self._delete("delete attachment", self._key("attachments", f"{snapshot_id}/{name}"))

    def list_attachments(self, snapshot_id: str | None = None) -> Iterator[AttachmentInfo]:
        start = self._key("attachments", f"{snapshot_id}/" if snapshot_id is not None else "")
        base = self._key("attachments", "")
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
            for page in pages:
                for item in page.get("Contents", []):
                    owner, sep, name = item["Key"][len(base):].partition("/")
                    if owner and sep and name and "/" not in name:
                        yield AttachmentInfo(owner, name, int(item["Size"]), item["LastModified"].timestamp())
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("list attachments", exc) from exc


def origin_from_url(url: str, endpoint_url: str | None = None) -> Origin:
    """``s3://bucket[/prefix]`` → `S3Origin`; anything else is a directory path."""
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise StoreError(f"snapshot store failed at step 'parse origin': {url!r} names no bucket")
        return S3Origin(bucket, prefix, endpoint_url=endpoint_url)
    if endpoint_url:
        raise StoreError("snapshot store failed at step 'parse origin': an S3 endpoint URL needs an s3:// origin")
    return DirectoryOrigin(Path(url))


def _stored_files(directory: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """The complete files of `directory` (sorted; temporaries of atomic writes and files that
    vanish meanwhile skipped; nothing if the directory is missing)."""
    try:
        paths = sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return
    for path in paths:
        if ".tmp" in path.name:
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        yield path, st
