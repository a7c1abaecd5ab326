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
the function they were taken from (`seal`/`lease` take the slice; the manifest records it,
and a snapshot is only ever handed out for the slice it was taken with). The manifest is written last and durably (write,
fsync, rename), so a snapshot without a manifest is incomplete and ignored.

The manifest is authenticated: ``"mac"`` is HMAC-SHA256, under a key derived from the master
key (HKDF, info="snapfaas snapshot manifest mac"), of the manifest's canonical encoding (JSON,
sorted keys, no whitespace, ASCII; the ``"mac"`` key itself left out), and the manifest names
its own snapshot id. `manifest` verifies it on every read: a manifest without a MAC, with a
wrong one or moved to another snapshot's directory is `SnapshotCorrupt`, so a snapshot's mode
(``restore_memory``), file list and checksums cannot be altered or swapped.

RAM cache budget: the cache holds whole snapshots up to `cache_bytes` in total; past it, the
least recently used snapshots that no restore has pinned (`lease`) are evicted. Eviction only
renames the directory away and unlinks its files, never rewrites one in place: a restored
process may still map an image file copy-on-write, and its pages stay valid (the tmpfs frees
them when the last mapping goes). A snapshot bigger than the whole budget is still cached and
restored (everything else unpinned is evicted for it).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
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

logger = logging.getLogger(__name__)
MAGIC = "SNAPFAAS-SNAPSHOT"
VERSION = 1
CHUNK = 4 << 20
MAC_INFO = b"snapfaas snapshot manifest mac"


class SnapshotCorrupt(ServiceError):
    """A stored snapshot failed authentication or its manifest is missing or malformed."""


def canonical(manifest: dict[str, Any]) -> bytes:
    """The bytes the manifest MAC covers: every key but ``"mac"``, canonically encoded."""
    body = {key: value for key, value in manifest.items() if key != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class CacheLease:
    """A snapshot's plaintext images, pinned in the RAM cache (eviction skips them) until
    `release` (idempotent); `manifest` is the verified manifest."""

    def __init__(self, vault: SnapshotVault, snapshot_id: str, path: Path, manifest: dict[str, Any]) -> None:
        self.vault = vault
        self.snapshot_id = snapshot_id
        self.path = path
        self.manifest = manifest
        self._released = False

    def __repr__(self) -> str:
        return f"<CacheLease {self.snapshot_id}{' released' if self._released else ''}>"

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.vault._unpin(self.snapshot_id)


class SnapshotVault:
    def __init__(self, root: Path, cache: Path, key_file: Path, image_owner: int,
                 group_of: Callable[[int], int], cache_bytes: int | None = None) -> None:
        """CRIU reads images both as host root (a freshly cloned task, before its user
        namespace has a uid map, has no DAC override there) and as the sandbox's mapped root:
        images belong to `image_owner` (root) and `group_of(slice)` (the host gid of the mapped
        root of the function's id slice), mode 0640 in 0750 directories; no other host user,
        and no other function's uids, can read them.

        `cache_bytes` is the RAM cache's budget (None: unbounded). Complete snapshots already
        in the cache directory (left by a previous run) are counted against it."""
        self.root = root
        self.cache = cache
        self.image_owner = image_owner
        self.group_of = group_of
        self.cache_bytes = cache_bytes
        root.mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        for directory in (cache.parent, cache):  # searchable (not listable) by the sandbox's uids
            os.chmod(directory, 0o711)
        self._master = self._load_key(key_file)
        self._mac_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=MAC_INFO).derive(self._master)
        self._locks: dict[str, threading.Lock] = {}  # per snapshot id: one decryption at a time
        self._locks_guard = threading.Lock()
        # the RAM cache's bookkeeping, under `_cache_guard`: snapshot id -> bytes, least recently used first
        self._cached: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._pins: collections.Counter[str] = collections.Counter()
        self._cache_guard = threading.Lock()
        self._adopt_cached()

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
        manifest["mac"] = self._mac(manifest)
        write_atomic(target / "manifest.json", json.dumps(manifest, indent=1).encode())
        self._own(plain, self.group_of(slice_index))
        self._admit(snapshot_id, plain)  # the dump directory is now the snapshot's cached copy
        return manifest

    def _mac(self, manifest: dict[str, Any]) -> str:
        return hmac.new(self._mac_key, canonical(manifest), hashlib.sha256).hexdigest()

    def manifest(self, snapshot_id: str) -> dict[str, Any]:
        """The snapshot's manifest, authenticated (see the module docstring); raises
        `SnapshotCorrupt` if it is missing, malformed, unauthenticated or another snapshot's."""
        try:
            manifest = json.loads((self.root / snapshot_id / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise SnapshotCorrupt(f"snapshot {snapshot_id}: manifest unreadable ({exc})") from exc
        if not isinstance(manifest, dict):
            raise SnapshotCorrupt(f"snapshot {snapshot_id}: manifest is not an object")
        mac = manifest.get("mac")
        if not isinstance(mac, str):
            raise SnapshotCorrupt(f"snapshot {snapshot_id}: manifest is not authenticated (no MAC)")
        if not hmac.compare_digest(mac, self._mac(manifest)):
            raise SnapshotCorrupt(f"snapshot {snapshot_id}: manifest failed authentication (MAC mismatch)")
        if manifest.get("magic") != MAGIC or manifest.get("version") != VERSION:
            raise SnapshotCorrupt(f"snapshot {snapshot_id}: not a version-{VERSION} snapfaas snapshot")
        if manifest.get("id") != snapshot_id:
            raise SnapshotCorrupt(f"snapshot {snapshot_id}: manifest belongs to snapshot {manifest.get('id')!r}")
        return manifest

    def exists(self, snapshot_id: str) -> bool:
        return (self.root / snapshot_id / "manifest.json").is_file()

    def _lock(self, snapshot_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(snapshot_id, threading.Lock())

    def lease(self, snapshot_id: str, slice_index: int) -> CacheLease:
        """Plaintext images for a restore into id slice `slice_index`, pinned until the lease is
        released: the RAM cache, filled from disk on a miss (which may evict other, unpinned
        snapshots).

        Thread-safe (it runs in worker threads): concurrent misses of one snapshot decrypt it
        once, and a complete cache directory is never replaced while restores may read it.
        The manifest is verified on every call, cache hit or not. Raises `SnapshotCorrupt` if
        the stored snapshot is missing, malformed or tampered with, or was taken in another
        slice (or with another id range): its images hold the checkpointed user namespace
        (``userns-*.img``), so it must be re-created.
        """
        manifest = self.manifest(snapshot_id)
        group = self.group_of(slice_index)
        if manifest.get("id_slice") != slice_index or manifest.get("image_group") != group:
            raise SnapshotCorrupt(f"snapshot {snapshot_id} was taken in id slice {manifest.get('id_slice')} "
                                  f"(group {manifest.get('image_group')}), not slice {slice_index} (group {group})")
        plain = self.cache / snapshot_id
        with self._cache_guard:
            self._pins[snapshot_id] += 1  # from here on no eviction takes it
        try:
            if not self._ready(plain, group):
                with self._lock(snapshot_id):
                    if not self._ready(plain, group):  # else another thread decrypted it while we waited
                        self._decrypt(snapshot_id, plain, manifest, group)
            self._admit(snapshot_id, plain)
        except BaseException:
            self._unpin(snapshot_id)
            raise
        return CacheLease(self, snapshot_id, plain, manifest)

    @staticmethod
    def _ready(plain: Path, group: int) -> bool:
        """A complete cached copy readable by the slice whose mapped root's gid is `group`."""
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

    def _unpin(self, snapshot_id: str) -> None:
        with self._cache_guard:
            self._pins[snapshot_id] -= 1
            if self._pins[snapshot_id] <= 0:
                del self._pins[snapshot_id]

    def cached(self) -> dict[str, int]:
        """Snapshot id -> cached bytes, least recently used first (a copy)."""
        with self._cache_guard:
            return dict(self._cached)

    def _adopt_cached(self) -> None:
        """Count complete snapshots left in the cache by a previous run (oldest first)."""
        found = sorted((p for p in self.cache.iterdir() if not p.name.startswith(".") and (p / ".complete").exists()),
                       key=lambda p: p.stat().st_mtime)
        for path in found:
            self._admit(path.name, path)

    def _admit(self, snapshot_id: str, plain: Path) -> None:
        """Record `snapshot_id` as the most recently used cached snapshot, then evict the least
        recently used unpinned others until the cache fits its budget (or only it and pinned
        snapshots are left)."""
        with self._cache_guard:
            known = self._cached.get(snapshot_id)
        size = self._bytes_of(plain) if known is None else known
        with self._cache_guard:
            self._cached[snapshot_id] = size
            self._cached.move_to_end(snapshot_id)
            victims = self._over_budget(keep=snapshot_id)
            moved = [self._detach(victim) for victim in victims]
        for victim, path in zip(victims, moved):
            logger.info("snapshot cache: evicted %s (budget %s bytes)", victim, self.cache_bytes)
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)

    def _over_budget(self, keep: str) -> list[str]:
        """Which cached snapshots to evict, least recently used first; under `_cache_guard`."""
        if self.cache_bytes is None:
            return []
        total = sum(self._cached.values())
        victims = []
        for candidate, size in self._cached.items():
            if total <= self.cache_bytes:
                break
            if candidate == keep or self._pins.get(candidate):
                continue
            victims.append(candidate)
            total -= size
        return victims

    def _detach(self, snapshot_id: str) -> Path | None:
        """Forget a cached snapshot and rename its directory out of the way (to a hidden name
        `collect_garbage` also removes); the caller unlinks it. Under `_cache_guard`."""
        self._cached.pop(snapshot_id, None)
        path = self.cache / snapshot_id
        trash = self.cache / f".evicted.{snapshot_id}.{secrets.token_hex(4)}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return None
        return trash

    @staticmethod
    def _bytes_of(plain: Path) -> int:
        return sum(entry.stat().st_size for entry in os.scandir(plain) if entry.is_file(follow_symlinks=False))

    def _decrypt(self, snapshot_id: str, plain: Path, manifest: dict[str, Any], group: int) -> None:
        """Decrypt the stored snapshot into `plain` (staged, then renamed into place)."""
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
        """Drop a snapshot's cached copy, pinned or not (its files are unlinked, not rewritten)."""
        with self._cache_guard:
            path = self._detach(snapshot_id)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

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
                if path.parent == self.cache and not path.name.startswith("."):
                    self.evict(path.name)
                else:
                    shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed
