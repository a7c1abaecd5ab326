"""Chunk sealing: convergent names and keys, compression choice, and that no tampered blob
ever opens (real zstd and AES-GCM)."""

from __future__ import annotations

import os

import pytest

from snapfaas.store.codec import CHUNK_SIZE, CODEC_RAW, CODEC_ZSTD, HEADER, ChunkCodec, load_or_create_secret
from snapfaas.store.errors import ChunkCorrupt, StoreError
from tests.storekit import library_text

SECRET = bytes(range(32))


def test_equal_content_under_one_secret_is_one_chunk_and_another_secret_changes_everything() -> None:
    plain = library_text(1, CHUNK_SIZE)
    a, b = ChunkCodec(SECRET).seal(plain), ChunkCodec(SECRET).seal(plain)
    assert (a.name, a.blob) == (b.name, b.blob)  # deterministic: dedup works on sealed chunks
    other = ChunkCodec(bytes(32)).seal(plain)
    assert other.name != a.name and other.blob != a.blob
    assert a.name != a.digest.hex()  # the name is keyed: not the bare content hash
    assert ChunkCodec(SECRET).seal(plain[:-1] + b"!").name != a.name


def test_open_returns_exactly_the_plaintext_and_compression_is_used_only_when_it_helps() -> None:
    codec = ChunkCodec(SECRET)
    text, noise = library_text(2, CHUNK_SIZE), os.urandom(CHUNK_SIZE - 5)
    for plain, codec_id in ((text, CODEC_ZSTD), (noise, CODEC_RAW), (b"x", CODEC_RAW)):
        sealed = codec.seal(plain)
        assert HEADER.unpack(sealed.blob[:HEADER.size])[2] == codec_id
        assert codec.open(sealed.name, sealed.digest, len(plain), sealed.blob) == plain
    assert len(codec.seal(text).blob) < len(text) // 2


def test_every_tampered_byte_and_every_wrong_claim_is_rejected() -> None:
    codec = ChunkCodec(SECRET)
    plain = library_text(3, 100_000)
    sealed = codec.seal(plain)
    positions = [0, 4, 5, 6, 17, HEADER.size, len(sealed.blob) // 2, len(sealed.blob) - 17, len(sealed.blob) - 1]
    for position in positions:
        blob = bytearray(sealed.blob)
        blob[position] ^= 0x01
        with pytest.raises(ChunkCorrupt):
            codec.open(sealed.name, sealed.digest, len(plain), bytes(blob))
    with pytest.raises(ChunkCorrupt):
        codec.open(sealed.name, sealed.digest, len(plain), sealed.blob[:-1])
    with pytest.raises(ChunkCorrupt):
        codec.open(sealed.name, sealed.digest, len(plain), sealed.blob[:10])
    other = codec.seal(b"other content")
    with pytest.raises(ChunkCorrupt, match="name"):  # a valid blob served under another name
        codec.open(sealed.name, other.digest, len(b"other content"), other.blob)
    with pytest.raises(ChunkCorrupt, match="decodes to"):
        codec.open(sealed.name, sealed.digest, len(plain) + 1, sealed.blob)
    with pytest.raises(ChunkCorrupt):  # right blob, another deployment's secret
        ChunkCodec(bytes(32)).open(sealed.name, sealed.digest, len(plain), sealed.blob)


def test_two_encodings_of_one_content_never_share_a_nonce() -> None:
    plain = library_text(4, CHUNK_SIZE)
    fast, small = ChunkCodec(SECRET, level=1).seal(plain), ChunkCodec(SECRET, level=19).seal(plain)
    assert fast.name == small.name and fast.blob != small.blob
    assert HEADER.unpack(fast.blob[:HEADER.size])[3] != HEADER.unpack(small.blob[:HEADER.size])[3]
    codec = ChunkCodec(SECRET)
    assert codec.open(fast.name, fast.digest, len(plain), fast.blob) == plain
    assert codec.open(small.name, small.digest, len(plain), small.blob) == plain


def test_chunk_size_bounds() -> None:
    codec = ChunkCodec(SECRET)
    with pytest.raises(ValueError):
        codec.seal(b"")
    with pytest.raises(ValueError):
        codec.seal(bytes(CHUNK_SIZE + 1))
    with pytest.raises(ValueError):
        ChunkCodec(b"short")


def test_secret_file_is_created_once_private_and_checked(tmp_path) -> None:
    path = tmp_path / "keys" / "store.key"
    secret = load_or_create_secret(path)
    assert len(secret) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_secret(path) == secret
    path.write_bytes(b"truncated")
    with pytest.raises(StoreError, match="failed at step 'load secret'"):
        load_or_create_secret(path)
