"""Snapshot images encrypted at rest, with a plaintext cache in memory.

Persistent layout (``<data-dir>/snapshots/<snapshot-id>/``)::

    manifest.json        {"magic": "SNAPFAAS-SNAPSHOT", "version": 1, "salt": hex,
                          "files": [{"name", "size", "sha256", "chunks"}], ...}
    <index>.enc          per image file: a sequence of chunks, each
                         +------------+------------------------------------+
                         | u32 BE len | AES-256-GCM(ciphertext || 16 B tag) |
                         +------------+------------------------------------+
                         nonce = u32 BE file index || u64 BE chunk index (unique per key)

The key is HKDF-SHA256(master key, salt, info="snapfaas snapshot " + id), a fresh random salt
per snapshot; the master key is ``<data-dir>/snapshot.key`` (0600). Plaintext images exist only
in the cache directory, which lives on a tmpfs (RAM), never on persistent disk; restores read
from it and a cache miss decrypts from disk. Plaintext images belong to the host id slice of
the function they were taken from (`seal`/`images` take the slice; the manifest records it,
and a snapshot is only ever handed out for the slice it was taken with). The manifest is written last and durably (write,
fsync, rename), so a snapshot without a manifest is incomplete and ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import struct
import threading
from pathlib import Path
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from snapfaas.durable import write_atomic
from snapfaas.errors import ServiceError

MAGIC = "SNAPFAAS-SNAPSHOT"
VERSION = 1
CHUNK = 4 << 20


class SnapshotCorrupt(ServiceError):
    """A stored snapshot failed authentication or its manifest is missing or malformed."""


class SnapshotVault:
    def __init__(self, root: Path, cache: Path, key_file: Path, image_owner: int,
                 group_of: Callable[[int], int]) -> None:
        """CRIU reads images both as host root (a freshly cloned task, before its user
        namespace has a uid map, has no DAC override there) and as the sandbox's mapped root:
        images belong to `image_owner` (root) and `group_of(slice)` (the host gid of the mapped
        root of the function's id slice), mode 0640 in 0750 directories; no other host user,
        and no other function's uids, can read them."""
        self.root = root
        self.cache = cache
        self.image_owner = image_owner
        self.group_of = group_of
        root.mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        for directory in (cache.parent, cache):  # searchable (not listable) by the sandbox's uids
            os.chmod(directory, 0o711)
        self._master = self._load_key(key_file)
        self._locks: dict[str, threading.Lock] = {}  # per snapshot id: one decryption at a time
        self._locks_guard = threading.Lock()

    @staticmethod
    def _load_key(path: Path) -> bytes:
        if not path.exists():
            write_atomic(path, secrets.token_bytes(32))
        key = path.read_bytes()
        if len(key) != 32:
            raise SnapshotCorrupt(f"snapshot key {path} is not 32 bytes")
        return key

    def _key(self, snapshot_id: str, salt: bytes) -> AESGCM:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"snapfaas snapshot " + snapshot_id.encode())
        return AESGCM(hkdf.derive(self._master))

    def work_dir(self, snapshot_id: str) -> Path:
        """A fresh plaintext directory (in the RAM cache) for CRIU to dump into."""
        path = self.cache / snapshot_id
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        os.chmod(path, 0o700)
        return path

    def seal(self, snapshot_id: str, plain: Path, extra: dict[str, Any], slice_index: int) -> dict[str, Any]:
        """Encrypt the images in `plain` (taken from an environment of id slice `slice_index`)
        to disk and write the manifest; returns it."""
        target = self.root / snapshot_id
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        salt = secrets.token_bytes(16)
        aead = self._key(snapshot_id, salt)
        files = []
        for index, path in enumerate(sorted(p for p in plain.iterdir() if p.is_file() and p.name not in ("dump.log", ".complete"))):
            digest = hashlib.sha256()
            chunks = 0
            with open(path, "rb") as src, open(target / f"{index}.enc", "wb") as out:
                while block := src.read(CHUNK):
                    digest.update(block)
                    sealed = aead.encrypt(struct.pack(">IQ", index, chunks), block, path.name.encode())
                    out.write(struct.pack(">I", len(sealed)) + sealed)
                    chunks += 1
                out.flush()
                os.fsync(out.fileno())
            files.append({"name": path.name, "size": path.stat().st_size, "sha256": digest.hexdigest(), "chunks": chunks})
        # the format keys come last: `extra` (the caller's metadata) must not overwrite them
        manifest = {**extra, "magic": MAGIC, "version": VERSION, "id": snapshot_id, "salt": salt.hex(), "files": files,
                    "id_slice": slice_index, "image_group": self.group_of(slice_index)}
        write_atomic(target / "manifest.json", json.dumps(manifest, indent=1).encode())
        self._own(plain, self.group_of(slice_index))
        return manifest

    def manifest(self, snapshot_id: str) -> dict[str, Any]:
        try:
            manifest = json.loads((self.root / snapshot_id / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise SnapshotCorrupt(f"snapshot {snapshot_id}: manifest unreadable ({exc})") from exc
        if manifest.get("magic") != MAGIC or manifest.get("version") != VERSION:
            raise SnapshotCorrupt(f"snapshot {snapshot_id}: not a version-{VERSION} snapfaas snapshot")
        return manifest

    def exists(self, snapshot_id: str) -> bool:
        return (self.root / snapshot_id / "manifest.json").is_file()

    def _lock(self, snapshot_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(snapshot_id, threading.Lock())

    def images(self, snapshot_id: str, slice_index: int) -> Path:
        """Plaintext images for a restore into id slice `slice_index`: the RAM cache, filled
        from disk on a miss.

        Thread-safe (it runs in worker threads): concurrent misses of one snapshot decrypt it
        once, and a complete cache directory is never replaced while restores may read it.
        Raises `SnapshotCorrupt` if the stored snapshot is missing, malformed or tampered with,
        or was taken in another slice (or with another id range): its images hold the
        checkpointed user namespace (``userns-*.img``), so it must be re-created.
        """
        plain = self.cache / snapshot_id
        group = self.group_of(slice_index)
        if self._cached(plain, group):
            return plain
        with self._lock(snapshot_id):
            if self._cached(plain, group):
                return plain  # another thread decrypted it while we waited
            self._decrypt(snapshot_id, plain, slice_index)
        return plain

    @staticmethod
    def _cached(plain: Path, group: int) -> bool:
        try:
            return (plain / ".complete").exists() and plain.lstat().st_gid == group
        except FileNotFoundError:
            return False

    def holds(self, slice_index: int) -> bool:
        """Whether the RAM cache holds plaintext images readable by id slice `slice_index`."""
        group = self.group_of(slice_index)
        for path in self.cache.iterdir():
            try:
                if path.lstat().st_gid == group:
                    return True
            except FileNotFoundError:
                continue
        return False

    def _decrypt(self, snapshot_id: str, plain: Path, slice_index: int) -> None:
        """Decrypt the stored snapshot into `plain` (staged, then renamed into place)."""
        manifest = self.manifest(snapshot_id)
        group = self.group_of(slice_index)
        if manifest.get("id_slice") != slice_index or manifest.get("image_group") != group:
            raise SnapshotCorrupt(f"snapshot {snapshot_id} was taken in id slice {manifest.get('id_slice')} "
                                  f"(group {manifest.get('image_group')}), not slice {slice_index} (group {group})")
        aead = self._key(snapshot_id, bytes.fromhex(manifest["salt"]))
        staging = self.cache / f".{snapshot_id}.{secrets.token_hex(4)}"
        staging.mkdir(parents=True)
        try:
            for index, entry in enumerate(manifest["files"]):
                self._decrypt_file(aead, self.root / snapshot_id / f"{index}.enc", staging / entry["name"], index, entry)
            (staging / ".complete").touch()
            self._own(staging, group)
            shutil.rmtree(plain, ignore_errors=True)  # an incomplete leftover: nobody restores from it
            os.rename(staging, plain)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _decrypt_file(aead: AESGCM, source: Path, dest: Path, index: int, entry: dict[str, Any]) -> None:
        digest = hashlib.sha256()
        try:
            with open(source, "rb") as src, open(dest, "wb") as out:
                for chunk in range(entry["chunks"]):
                    (length,) = struct.unpack(">I", src.read(4))
                    block = aead.decrypt(struct.pack(">IQ", index, chunk), src.read(length), entry["name"].encode())
                    digest.update(block)
                    out.write(block)
        except Exception as exc:  # cryptography raises InvalidTag; struct/OSError for truncation
            raise SnapshotCorrupt(f"snapshot image {entry['name']} failed to decrypt: {type(exc).__name__} {exc}") from exc
        if digest.hexdigest() != entry["sha256"]:
            raise SnapshotCorrupt(f"snapshot image {entry['name']}: checksum mismatch")

    def _own(self, plain: Path, group: int) -> None:
        """Tightest permissions that still restore (see `__init__`); the directory's group is
        set last, so a cache entry whose directory has the slice's group is complete."""
        (plain / ".complete").touch()
        for path in [*plain.iterdir(), plain]:
            os.chown(path, self.image_owner, group)
            os.chmod(path, 0o750 if path.is_dir() else 0o640)

    def evict(self, snapshot_id: str) -> None:
        shutil.rmtree(self.cache / snapshot_id, ignore_errors=True)

    def delete(self, snapshot_id: str) -> None:
        self.evict(snapshot_id)
        shutil.rmtree(self.root / snapshot_id, ignore_errors=True)
        with self._locks_guard:
            self._locks.pop(snapshot_id, None)

    def collect_garbage(self, referenced: set[str]) -> int:
        """Remove snapshots (stored or cached) not in `referenced`, and interrupted temporaries."""
        removed = 0
        for path in [*self.root.iterdir(), *self.cache.iterdir()]:
            if path.name.startswith(".") or path.name not in referenced:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed
