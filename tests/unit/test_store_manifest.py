"""Manifest envelope: round trip, checksum vs authentication failures, version, binding to its
snapshot id, and structural checks of an authenticated body (real AES-GCM)."""

from __future__ import annotations

import hashlib

import pytest

from snapfaas.store.codec import CHUNK_SIZE, ChunkCodec
from snapfaas.store.errors import ManifestInvalid, StoreError
from snapfaas.store.manifest import DIR, FILE, HEADER, SYMLINK, ChunkRef, FileEntry, Manifest, check_snapshot_id, decode, encode

KEY = ChunkCodec(bytes(range(32))).manifest_key
NAME, DIGEST = "ab" * 32, bytes(range(32))


def sample() -> Manifest:
    size = 2 * CHUNK_SIZE + 10
    chunks = [ChunkRef(0, CHUNK_SIZE, NAME, DIGEST, 1000), ChunkRef(CHUNK_SIZE, CHUNK_SIZE, None, None, 0),
              ChunkRef(2 * CHUNK_SIZE, 10, "cd" * 32, DIGEST, 40)]
    return Manifest("fn-3-9f2c", [FileEntry("pages-1.img", FILE, mode=0o600, size=size, chunks=chunks),
                                  FileEntry("tmp", DIR, mode=0o700),
                                  FileEntry("tmp/link", SYMLINK, target="../pages-1.img"),
                                  FileEntry("tmp/empty", FILE, mode=0o644, size=0)],
                    meta={"restore_memory": "map"}, created=1764500000.25)


def rechecksum(data: bytes) -> bytes:
    body = data[:-32]
    return body + hashlib.sha256(body).digest()


def test_round_trip_keeps_everything_and_the_body_is_not_readable() -> None:
    manifest = sample()
    data = encode(manifest, KEY)
    again = decode("fn-3-9f2c", data, KEY)
    assert again == manifest
    assert b"pages-1.img" not in data and DIGEST.hex().encode() not in data and NAME.encode() not in data
    entry = again.file("pages-1.img")
    assert [index for index, _ in entry.covering(CHUNK_SIZE - 1, 2)] == [0, 1]
    assert [index for index, _ in entry.covering(2 * CHUNK_SIZE + 9, 100)] == [2]
    assert entry.covering(2 * CHUNK_SIZE + 10, 5) == []
    assert again.names() == {NAME, "cd" * 32}


def test_damage_is_a_checksum_failure_and_a_forgery_an_authentication_failure() -> None:
    data = encode(sample(), KEY)
    for position in (0, 9, HEADER.size + 3, len(data) // 2, len(data) - 40, len(data) - 1):
        damaged = bytearray(data)
        damaged[position] ^= 1
        with pytest.raises(ManifestInvalid, match="checksum"):
            decode("fn-3-9f2c", bytes(damaged), KEY)
    for position in (9, HEADER.size + 3, len(data) // 2, len(data) - 40):  # checksum fixed up: the MAC still fails
        forged = bytearray(data)
        forged[position] ^= 1
        with pytest.raises(ManifestInvalid, match="authentication failed"):
            decode("fn-3-9f2c", rechecksum(bytes(forged)), KEY)
    with pytest.raises(ManifestInvalid, match="checksum"):
        decode("fn-3-9f2c", data[:-1], KEY)
    with pytest.raises(ManifestInvalid, match="too short"):
        decode("fn-3-9f2c", data[:20], KEY)


def test_a_manifest_is_bound_to_its_snapshot_id_and_secret() -> None:
    data = encode(sample(), KEY)
    with pytest.raises(ManifestInvalid, match="authentication failed"):
        decode("fn-4-0000", data, KEY)
    with pytest.raises(ManifestInvalid, match="authentication failed"):
        decode("fn-3-9f2c", data, ChunkCodec(bytes(32)).manifest_key)


def test_an_unknown_version_says_so() -> None:
    data = bytearray(encode(sample(), KEY))
    data[8] = 2
    with pytest.raises(ManifestInvalid, match="unsupported manifest format version 2"):
        decode("fn-3-9f2c", rechecksum(bytes(data)), KEY)


@pytest.mark.parametrize("why, files", [
    ("unsafe path", [FileEntry("../etc/passwd", FILE, size=0)]),
    ("unsafe path", [FileEntry("/abs", FILE, size=0)]),
    ("unsafe path", [FileEntry("a//b", FILE, size=0)]),
    ("before its directory", [FileEntry("tmp/x", FILE, size=0)]),
    ("before its directory", [FileEntry("l", SYMLINK, target="/"), FileEntry("l/x", FILE, size=0)]),
    ("duplicate", [FileEntry("a", FILE, size=0), FileEntry("a", DIR)]),
    ("contiguous", [FileEntry("a", FILE, size=20, chunks=[ChunkRef(0, 10, None, None, 0), ChunkRef(11, 9, None, None, 0)])]),
    ("contiguous", [FileEntry("a", FILE, size=10, chunks=[ChunkRef(0, 0, None, None, 0), ChunkRef(0, 10, None, None, 0)])]),
    ("contiguous", [FileEntry("a", FILE, size=CHUNK_SIZE + 1, chunks=[ChunkRef(0, CHUNK_SIZE + 1, None, None, 0)])]),
    ("cover", [FileEntry("a", FILE, size=CHUNK_SIZE + 1, chunks=[ChunkRef(0, CHUNK_SIZE, None, None, 0)])]),
    ("half a hole", [FileEntry("a", FILE, size=5, chunks=[ChunkRef(0, 5, NAME, None, 0)])]),
    ("malformed", [FileEntry("a", FILE, size=5, chunks=[ChunkRef(0, 5, "zz", DIGEST, 0)])]),
])
def test_an_authenticated_but_insane_body_is_rejected(why: str, files: list[FileEntry]) -> None:
    data = encode(Manifest("s", files), KEY)
    with pytest.raises(ManifestInvalid, match=why):
        decode("s", data, KEY)


def test_snapshot_ids_are_safe_keys() -> None:
    assert check_snapshot_id("my-fn-12-9f2c0a") == "my-fn-12-9f2c0a"
    for bad in ("", "../x", "a/b", ".hidden", "x" * 201, "a b"):
        with pytest.raises(StoreError, match="check snapshot id"):
            check_snapshot_id(bad)


def test_chunks_may_vary_in_length_and_covering_finds_them() -> None:
    refs = [ChunkRef(0, 8192, NAME, DIGEST, 10), ChunkRef(8192, 4096, None, None, 0), ChunkRef(12288, CHUNK_SIZE, NAME, DIGEST, 10)]
    back = decode("s", encode(Manifest("s", [FileEntry("pages-1.img", FILE, size=12288 + CHUNK_SIZE, chunks=refs)]), KEY), KEY)
    entry = back.file("pages-1.img")
    assert entry is not None and entry.chunks == refs
    assert [index for index, _ in entry.covering(8000, 5000)] == [0, 1, 2]
    assert [index for index, _ in entry.covering(8192, 4096)] == [1]


def test_a_format_1_body_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Written before chunks varied in length: rejected, so the snapshot is re-created."""
    from snapfaas.store import manifest as module

    monkeypatch.setattr(module, "FORMAT", 1)
    data = encode(Manifest("s", [FileEntry("a", FILE, size=0)]), KEY)
    monkeypatch.undo()
    with pytest.raises(ManifestInvalid, match="unsupported body format 1"):
        decode("s", data, KEY)


def test_packed_references_round_trip_and_a_bad_slice_is_refused() -> None:
    packed = [FileEntry("core-1.img", FILE, mode=0o600, size=100, chunks=[ChunkRef(0, 100, NAME, DIGEST, 90, 0, 350)]),
              FileEntry("stats-dump", FILE, mode=0o600, size=250, chunks=[ChunkRef(0, 250, NAME, DIGEST, 90, 100, 350)])]
    manifest = Manifest("fn-3-9f2c", packed, created=1.0)
    again = decode("fn-3-9f2c", encode(manifest, KEY), KEY)
    assert again == manifest and [entry.chunks[0].at for entry in again.files] == [0, 100]
    ref = again.files[1].chunks[0]
    assert ref.packed and ref.chunk_length == 350 and ref.whole() == ChunkRef(0, 350, NAME, DIGEST, 90)
    assert ref.cut(bytes(range(256)) + bytes(94)) == (bytes(range(256)) + bytes(94))[100:350]
    for bad in (ChunkRef(0, 250, NAME, DIGEST, 90, 101, 350), ChunkRef(0, 250, NAME, DIGEST, 90, 0, CHUNK_SIZE + 1)):
        broken = Manifest("fn-3-9f2c", [FileEntry("stats-dump", FILE, mode=0o600, size=250, chunks=[bad])])
        with pytest.raises(ManifestInvalid, match="packed"):
            decode("fn-3-9f2c", encode(broken, KEY), KEY)
