"""Chunk sealing: zstd compression + convergent AES-256-GCM encryption, and the chunk layout.

A chunk is at most `CHUNK_SIZE` (512 KiB) bytes of one file's plaintext. Sealed, it is a blob
stored under its *name* in the disk cache and at the origin::

    offset 0      4       5       6                    18                             end
           +------+-------+-------+--------------------+-------------------------------+
           | SFCK | ver 1 | codec | nonce (12 bytes)   | AES-256-GCM(payload) || tag 16 |
           +------+-------+-------+--------------------+-------------------------------+
           AAD = the 18-byte header (magic, version, codec, nonce)
           codec 0: payload = plaintext          codec 1: payload = one zstd frame
           (codec 0 is chosen when zstd does not make the chunk smaller, e.g. random bytes)

Derivations (``secret`` = the deployment secret, 32 random bytes; K_* = HKDF-SHA256 subkeys
of it with distinct ``info`` labels, so no two uses share a key)::

    h      = SHA-256(plaintext)                     content hash, recorded in the manifest
    name   = hex(HMAC-SHA256(K_name, h))            the chunk's address in every tier
    key    = HMAC-SHA256(K_key, h)                  AES-256 key of this content only
    nonce  = HMAC-SHA256(key, "nonce" || header[0:6] || payload)[0:12]

(K_manifest and K_attachment, two more subkeys, seal manifest and attachment envelopes: see
`manifest` and `attachment`.)

*Convergent*: equal plaintext under one secret gives an equal name and key, so dedup works on
encrypted chunks: a store that already holds a name does not need the chunk again. Keyed with
the secret, a name reveals nothing about the content to whoever holds the origin alone (no
"confirm a guessed chunk" attack, which plain SHA-256 names would allow), and a chunk cannot be
decrypted without the manifest's ``h`` *and* the secret.

*Deterministic nonce*: GCM breaks only when one (key, nonce) pair encrypts two different
messages. ``key`` is unique per plaintext content (distinct contents collide only if SHA-256 or
HMAC does), so a key only ever encrypts encodings of one plaintext. Those encodings may still
differ (another zstd version or level, raw vs compressed), which is why the nonce is derived
from the payload itself, synthetic-IV style: two different payloads under one key get two
different nonces (except with probability 2^-96), and identical payloads give identical blobs,
which reveals only the equality that dedup is built on. A random nonce would be equally safe
but would make every upload of a chunk a different blob.

*Never a wrong byte*: `open_chunk` returns plaintext only if the header parses, the GCM tag
verifies, the payload decodes to exactly the expected length, SHA-256 of it is ``h`` and
HMAC(K_name, h) is the name it was read under; anything else raises `ChunkCorrupt`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from snapfaas.store.errors import ChunkCorrupt, StoreError

CHUNK_SIZE = 512 * 1024
MAGIC = b"SFCK"
VERSION = 1
CODEC_RAW = 0
CODEC_ZSTD = 1
HEADER = struct.Struct(">4sBB12s")  # magic, version, codec, nonce
TAG_BYTES = 16
SECRET_BYTES = 32
ZSTD_LEVEL = 3


def _subkey(secret: bytes, label: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"snapfaas store {label}".encode()).derive(secret)


def load_or_create_secret(path: Path) -> bytes:
    """The deployment secret at `path` (created 0600 with 32 random bytes if absent).

    Every host that shares an origin must use the same secret, or names and keys differ.
    """
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_bytes(SECRET_BYTES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secret)
            out.flush()
            os.fsync(out.fileno())
        return secret
    if len(secret) != SECRET_BYTES:
        raise StoreError(f"snapshot store failed at step 'load secret': {path} holds {len(secret)} bytes, not {SECRET_BYTES}")
    return secret


@dataclass(frozen=True)
class SealedChunk:
    """One chunk ready to store: its name, content hash, plaintext length and blob."""

    name: str
    digest: bytes
    length: int
    blob: bytes


class ChunkCodec:
    """Seals and opens chunks under one deployment secret. Stateless apart from the keys, so
    one instance is safe to share between threads."""

    def __init__(self, secret: bytes, level: int = ZSTD_LEVEL) -> None:
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"the store secret must be {SECRET_BYTES} bytes")
        self._name_key = _subkey(secret, "chunk name")
        self._key_key = _subkey(secret, "chunk key")
        self.manifest_key = _subkey(secret, "manifest")
        self.attachment_key = _subkey(secret, "attachment")
        self._level = level

    def name_of(self, digest: bytes) -> str:
        return hmac.new(self._name_key, digest, hashlib.sha256).hexdigest()

    def _key_of(self, digest: bytes) -> bytes:
        return hmac.new(self._key_key, digest, hashlib.sha256).digest()

    def seal(self, plain: bytes) -> SealedChunk:
        """Compress (if it helps) and encrypt `plain` (1..CHUNK_SIZE bytes)."""
        if not 0 < len(plain) <= CHUNK_SIZE:
            raise ValueError(f"a chunk holds 1..{CHUNK_SIZE} bytes, not {len(plain)}")
        digest = hashlib.sha256(plain).digest()
        key = self._key_of(digest)
        # zstandard compressors are not thread-safe: one per call (cheap next to the work)
        packed = zstandard.ZstdCompressor(level=self._level).compress(plain)
        codec, payload = (CODEC_ZSTD, packed) if len(packed) < len(plain) else (CODEC_RAW, plain)
        prefix = HEADER.pack(MAGIC, VERSION, codec, bytes(12))[:6]
        nonce = hmac.new(key, b"nonce" + prefix + payload, hashlib.sha256).digest()[:12]
        header = HEADER.pack(MAGIC, VERSION, codec, nonce)
        blob = header + AESGCM(key).encrypt(nonce, payload, header)
        return SealedChunk(self.name_of(digest), digest, len(plain), blob)

    def open(self, name: str, digest: bytes, length: int, blob: bytes) -> bytes:
        """The verified plaintext of `blob`, read under `name`, whose manifest says it holds
        `length` bytes hashing to `digest`; `ChunkCorrupt` otherwise."""
        if len(blob) < HEADER.size + TAG_BYTES:
            raise ChunkCorrupt(f"blob of {len(blob)} bytes is shorter than a header and tag")
        header = blob[:HEADER.size]
        magic, version, codec, nonce = HEADER.unpack(header)
        if magic != MAGIC:
            raise ChunkCorrupt("bad magic")
        if version != VERSION:
            raise ChunkCorrupt(f"unsupported chunk format version {version}")
        if codec not in (CODEC_RAW, CODEC_ZSTD):
            raise ChunkCorrupt(f"unknown codec {codec}")
        if not hmac.compare_digest(self.name_of(digest), name):
            raise ChunkCorrupt("name does not match the manifest's content hash")
        try:
            payload = AESGCM(self._key_of(digest)).decrypt(nonce, blob[HEADER.size:], header)
        except InvalidTag:
            raise ChunkCorrupt("authentication tag mismatch") from None
        if codec == CODEC_ZSTD:
            try:
                if not 0 < zstandard.frame_content_size(payload) <= CHUNK_SIZE:
                    raise ChunkCorrupt("zstd frame declares no or an oversized content size")
                plain = zstandard.ZstdDecompressor().decompress(payload, max_output_size=CHUNK_SIZE)
            except zstandard.ZstdError as exc:
                raise ChunkCorrupt(f"zstd frame does not decode: {exc}") from None
        else:
            plain = payload
        if len(plain) != length:
            raise ChunkCorrupt(f"decodes to {len(plain)} bytes, the manifest says {length}")
        if not hmac.compare_digest(hashlib.sha256(plain).digest(), digest):
            raise ChunkCorrupt("content hash mismatch")
        return plain
