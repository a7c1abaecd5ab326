"""Snapshot manifests: what files a snapshot holds and which chunks make each one up.

A manifest is stored at the origin under its snapshot id as one envelope::

    offset 0          8       9                     21          25                    25+n    25+n+32
           +----------+-------+---------------------+-----------+---------------------+-----------+
           | SFMANIFT | ver 1 | nonce (12, random)  | n (u32 BE)| AES-256-GCM(body)   | SHA-256   |
           |          |       |                     |           |  n bytes incl. tag  | checksum  |
           +----------+-------+---------------------+-----------+---------------------+-----------+
           AAD (authenticated, not encrypted) = header bytes 0..25 || snapshot id (UTF-8)
           checksum = SHA-256 of every byte before it

* *Versioned*: the version byte selects the envelope and body format; an unknown version is
  rejected with a message saying so, never guessed at.
* *Checksummed*: the trailing SHA-256 detects truncation and bit rot without the secret (an
  operator tool can check an origin's integrity with no keys).
* *Authenticated*: the GCM tag is a MAC (GMAC) keyed by a subkey of the deployment secret over
  the header, the snapshot id and the body: a manifest edited, forged or moved to another
  snapshot id fails. The body is also encrypted, because it holds each chunk's content hash
  ``h``, which together with the secret yields the chunk's key (see `codec`). The manifest key
  is shared by all manifests, so its nonce is random (96 bits; safe far past any plausible
  manifest count).

The body is canonical JSON (sorted keys, no whitespace)::

    {"format": 2, "snapshot": "fn-3-9f2c...", "chunk_size": 524288, "created": 1764500000.25,
     "meta": {... caller's data, e.g. the restore mode ...},
     "files": [
       {"path": "pages-1.img", "type": "file", "mode": 384, "size": 1310720,
        "chunks": [[0,      524288, "<name hex>", "<h hex>", 20931],    <- offset, length,
                   [524288, 524288, null,         null,      0],        <- a hole (all zero)
                   [1048576, 262144, "<name hex>", "<h hex>", 262190]]}, name, h, stored bytes
       {"path": "tmp", "type": "dir", "mode": 448},
       {"path": "tmp/link", "type": "symlink", "target": "../pages-1.img"}]}

A file's chunks are ordered, contiguous and cover ``[0, size)`` exactly; each is 1..`CHUNK_SIZE`
bytes long (``chunk_size`` is that maximum). Where the cuts fall is the writer's choice
(`layout`): CRIU page images (``pages-*.img``) are cut along the memory they hold, so their
chunks vary in length; other files are cut every `CHUNK_SIZE` bytes, except *packed* small
files (`layout.PACK_MAX`): several of them share one chunk, each a slice of it, so a snapshot's
~30 small CRIU images (a few of which differ in every dump: timestamps, pids, cgroup paths)
make one or two new chunks per version instead of one per changed file. A packed file has a
single chunk reference of seven fields, the last two its slice's start in the chunk and the
chunk's whole length::

       [0, 3804, "<name hex>", "<h hex>", 9120, 11264, 57638]     <- offset, length, name, h,
                                                                    stored, at, chunk length
       chunk plaintext:  [ file A | file B | ...  cgroup.img (3804 bytes at 11264) ... ]

Body format 3 adds packed references; format 2 (none) is still read; a format-1 body (every
chunk but a file's last `CHUNK_SIZE` long) is rejected as unsupported, so a snapshot written
before is re-created like any unusable one. An
all-zero chunk is a *hole*: recorded, never stored, materialized as a sparse hole. Paths are relative, ``/``-separated, without ``.``/``..``
components; a directory is listed before anything inside it.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from snapfaas.store.codec import CHUNK_SIZE
from snapfaas.store.errors import ManifestInvalid, StoreError

MAGIC = b"SFMANIFT"
VERSION = 1
FORMAT = 3  # 3: small files may be packed (slices of a shared chunk); 2: variable-length chunks, read too; 1 is not read
READABLE_FORMATS = (2, 3)
HEADER = struct.Struct(">8sB12sI")  # magic, version, nonce, body length
CHECKSUM_BYTES = 32
MAX_BODY = 256 << 20
SNAPSHOT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
FILE, DIR, SYMLINK = "file", "dir", "symlink"


def check_snapshot_id(snapshot_id: str) -> str:
    """`snapshot_id` if it is a valid store key (letters, digits, ``._-``; at most 200)."""
    if not isinstance(snapshot_id, str) or not SNAPSHOT_ID.fullmatch(snapshot_id):
        raise StoreError(f"snapshot store failed at step 'check snapshot id': {snapshot_id!r} is not a valid id")
    return snapshot_id


def check_path(path: str) -> str:
    """`path` if it is a safe relative path (no absolute path, no ``.``/``..``/empty part)."""
    parts = path.split("/") if isinstance(path, str) else [""]
    if not path or any(part in ("", ".", "..") or "\0" in part for part in parts):
        raise ValueError(f"unsafe path {path!r}")
    return path


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a file: its place, and its name and content hash (both None for a hole)."""

    offset: int
    length: int
    name: str | None
    digest: bytes | None
    stored: int  # blob bytes at the origin when written (0 for a hole)
    at: int = 0  # packed: where this file's bytes start in the chunk's plaintext
    span: int = 0  # packed: the chunk's whole plaintext length (0: not packed, the chunk is `length` long)

    @property
    def is_hole(self) -> bool:
        return self.name is None

    @property
    def packed(self) -> bool:
        """Whether this reference is a slice of a chunk that packs several small files."""
        return self.span != 0

    @property
    def chunk_length(self) -> int:
        """The plaintext length of the chunk this reference names (its slice's for a packed one)."""
        return self.span or self.length

    def whole(self) -> ChunkRef:
        """The reference to the whole chunk a packed reference is a slice of (itself otherwise)."""
        return ChunkRef(0, self.span, self.name, self.digest, self.stored) if self.packed else self

    def cut(self, chunk: bytes) -> bytes:
        """This reference's bytes of the whole chunk's plaintext `chunk`."""
        return chunk[self.at:self.at + self.length] if self.packed else chunk


@dataclass
class FileEntry:
    """A file, directory or symlink of a snapshot tree."""

    path: str
    type: str
    mode: int = 0
    size: int = 0
    chunks: list[ChunkRef] = field(default_factory=list)
    target: str = ""
    _offsets: list[int] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._offsets = [ref.offset for ref in self.chunks]

    def covering(self, offset: int, length: int) -> list[tuple[int, ChunkRef]]:
        """(index, ref) of every chunk overlapping ``[offset, offset + length)``."""
        end = min(offset + length, self.size)
        if offset >= end:
            return []
        first = bisect.bisect_right(self._offsets, offset) - 1
        out = []
        for index in range(max(first, 0), len(self.chunks)):
            ref = self.chunks[index]
            if ref.offset >= end:
                break
            out.append((index, ref))
        return out


@dataclass
class Manifest:
    snapshot_id: str
    files: list[FileEntry]
    meta: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    chunk_size: int = CHUNK_SIZE

    def file(self, path: str) -> FileEntry | None:
        for entry in self.files:
            if entry.path == path:
                return entry
        return None

    def chunk_refs(self) -> list[ChunkRef]:
        """Every stored (non-hole) chunk reference, in file order, duplicates included."""
        return [ref for entry in self.files for ref in entry.chunks if not ref.is_hole]

    def names(self) -> set[str]:
        return {ref.name for ref in self.chunk_refs() if ref.name is not None}

    @property
    def raw_bytes(self) -> int:
        return sum(entry.size for entry in self.files)


def _body(manifest: Manifest) -> dict[str, Any]:
    files: list[dict[str, Any]] = []
    for entry in manifest.files:
        item: dict[str, Any] = {"path": entry.path, "type": entry.type}
        if entry.type == FILE:
            item.update(mode=entry.mode, size=entry.size, chunks=[
                [ref.offset, ref.length, ref.name, ref.digest.hex() if ref.digest else None, ref.stored]
                + ([ref.at, ref.span] if ref.packed else [])
                for ref in entry.chunks])
        elif entry.type == DIR:
            item["mode"] = entry.mode
        else:
            item["target"] = entry.target
        files.append(item)
    return {"format": FORMAT, "snapshot": manifest.snapshot_id, "chunk_size": manifest.chunk_size,
            "created": manifest.created, "meta": manifest.meta, "files": files}


def encode(manifest: Manifest, key: bytes) -> bytes:
    """The envelope of `manifest`, sealed under the manifest `key` (`ChunkCodec.manifest_key`)."""
    check_snapshot_id(manifest.snapshot_id)
    body = json.dumps(_body(manifest), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    nonce = os.urandom(12)
    sealed_len = len(body) + 16
    header = HEADER.pack(MAGIC, VERSION, nonce, sealed_len)
    sealed = AESGCM(key).encrypt(nonce, body, header + manifest.snapshot_id.encode())
    data = header + sealed
    return data + hashlib.sha256(data).digest()


def decode(snapshot_id: str, data: bytes, key: bytes) -> Manifest:
    """The verified manifest of `snapshot_id` from its envelope; `ManifestInvalid` on any fault."""

    def bad(why: str) -> ManifestInvalid:
        return ManifestInvalid(f"snapshot store failed at step 'verify manifest' of snapshot {snapshot_id}: {why}")

    if len(data) < HEADER.size + 16 + CHECKSUM_BYTES:
        raise bad(f"{len(data)} bytes is too short")
    payload, checksum = data[:-CHECKSUM_BYTES], data[-CHECKSUM_BYTES:]
    if hashlib.sha256(payload).digest() != checksum:
        raise bad("checksum mismatch (truncated or damaged)")
    magic, version, nonce, sealed_len = HEADER.unpack(payload[:HEADER.size])
    if magic != MAGIC:
        raise bad("bad magic")
    if version != VERSION:
        raise bad(f"unsupported manifest format version {version} (this build reads {VERSION})")
    if sealed_len != len(payload) - HEADER.size or sealed_len > MAX_BODY:
        raise bad("body length does not match")
    try:
        body = AESGCM(key).decrypt(nonce, payload[HEADER.size:], payload[:HEADER.size] + snapshot_id.encode())
    except InvalidTag:
        raise bad("authentication failed (tampered, another snapshot's manifest, or another deployment secret)") from None
    try:
        return _parse(snapshot_id, json.loads(body))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise bad(f"malformed body: {exc}") from None


def _parse(snapshot_id: str, body: dict[str, Any]) -> Manifest:
    """Structural checks: an authenticated manifest is still only trusted as far as it is sane."""
    if body["format"] not in READABLE_FORMATS:
        raise ValueError(f"unsupported body format {body['format']}")
    if body["snapshot"] != snapshot_id:
        raise ValueError(f"names snapshot {body['snapshot']!r}")
    chunk_size = int(body["chunk_size"])
    if chunk_size != CHUNK_SIZE:
        raise ValueError(f"chunk size {chunk_size}, this build uses {CHUNK_SIZE}")
    meta = body["meta"]
    if not isinstance(meta, dict):
        raise ValueError("meta is not an object")
    files: list[FileEntry] = []
    seen: set[str] = set()
    dirs: set[str] = set()
    for item in body["files"]:
        path = check_path(item["path"])
        if path in seen:
            raise ValueError(f"duplicate path {path!r}")
        parent = path.rpartition("/")[0]
        if parent and parent not in dirs:
            raise ValueError(f"{path!r} comes before its directory")
        seen.add(path)
        kind = item["type"]
        if kind == DIR:
            dirs.add(path)
            files.append(FileEntry(path, DIR, mode=int(item["mode"]) & 0o7777))
        elif kind == SYMLINK:
            target = item["target"]
            if not isinstance(target, str) or not target or "\0" in target:
                raise ValueError(f"bad symlink target for {path!r}")
            files.append(FileEntry(path, SYMLINK, target=target))
        elif kind == FILE:
            files.append(_parse_file(path, item, packing=body["format"] >= 3))
        else:
            raise ValueError(f"unknown entry type {kind!r}")
    return Manifest(snapshot_id, files, meta=meta, created=float(body["created"]), chunk_size=chunk_size)


def _parse_file(path: str, item: dict[str, Any], packing: bool = True) -> FileEntry:
    size = int(item["size"])
    refs: list[ChunkRef] = []
    expected = 0
    chunks = item["chunks"]
    for fields in chunks:
        if len(fields) == 7 and packing:
            offset, length, name, digest, stored, at, span = fields
            if len(chunks) != 1 or name is None or not (0 <= at and 0 < span <= CHUNK_SIZE and at + length <= span):
                raise ValueError(f"packed chunk of {path!r} is not one slice of a stored chunk of 1..{CHUNK_SIZE} bytes")
        elif len(fields) == 5:
            offset, length, name, digest, stored = fields
            at = span = 0
        else:
            raise ValueError(f"chunk of {path!r} has {len(fields)} fields")
        if offset != expected or not 0 < length <= CHUNK_SIZE:
            raise ValueError(f"chunks of {path!r} are not contiguous pieces of 1..{CHUNK_SIZE} bytes")
        if (name is None) != (digest is None):
            raise ValueError(f"chunk at {offset} of {path!r} is half a hole")
        if name is not None and not (re.fullmatch(r"[0-9a-f]{64}", name) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ValueError(f"chunk at {offset} of {path!r} has a malformed name or hash")
        refs.append(ChunkRef(int(offset), int(length), name, bytes.fromhex(digest) if digest else None, int(stored),
                             int(at), int(span)))
        expected = offset + length
    if expected != size:
        raise ValueError(f"chunks of {path!r} cover {expected} bytes, the file has {size}")
    return FileEntry(path, FILE, mode=int(item["mode"]) & 0o7777, size=size, chunks=refs)
