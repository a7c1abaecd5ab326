"""Attachments: small named documents that belong to one snapshot (its recorded working set,
...), sealed like its manifest and stored beside it.

An attachment is stored at the origin (and copied into the disk cache) as one envelope::

    offset 0          8       9                     21                              end
           +----------+-------+---------------------+-------------------------------+
           | SFATTACH | ver 1 | nonce (12, random)  | AES-256-GCM(data) || tag (16) |
           +----------+-------+---------------------+-------------------------------+
           AAD (authenticated, not encrypted) = header bytes 0..21 || snapshot id || 0x00 || name

* *Authenticated and bound*: the key is a subkey of the deployment secret of its own
  (``attachment``, `ChunkCodec.attachment_key`); the associated data names the snapshot and
  the attachment, so an envelope copied to another snapshot, renamed, edited or sealed under
  another secret fails to open (`AttachmentInvalid`). The store then treats it as absent.
* *Encrypted*: an attachment may say which host files a function maps.
* *Mutable*: unlike a manifest an attachment may be rewritten (last writer wins); every write
  seals afresh with a random nonce (96 bits under one shared key: safe far past any plausible
  number of writes) and replaces the whole object atomically.

Names are short lowercase words (``[a-z0-9][a-z0-9_-]{0,63}``: no dots, so never a ``.tmp``
temporary and never a path component of its own); data is at most `MAX_BYTES`.
"""

from __future__ import annotations

import os
import re
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from snapfaas.store.errors import StoreError

MAGIC = b"SFATTACH"
VERSION = 1
HEADER = struct.Struct(">8sB12s")  # magic, version, nonce
TAG_BYTES = 16
MAX_BYTES = 64 << 20
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class AttachmentInvalid(ValueError):
    """An attachment envelope failed its checks (internal to the store: it reads as absent)."""


def check_name(name: str) -> str:
    """`name` if it is a valid attachment name."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise StoreError(f"snapshot store failed at step 'check attachment name': {name!r} is not a valid name "
                         f"(lowercase letters, digits, '_' and '-'; at most 64)")
    return name


def _aad(header: bytes, snapshot_id: str, name: str) -> bytes:
    return header + snapshot_id.encode() + b"\0" + name.encode()


def seal(snapshot_id: str, name: str, data: bytes, key: bytes) -> bytes:
    """The envelope of `data` as attachment `name` of `snapshot_id`."""
    if len(data) > MAX_BYTES:
        raise StoreError(f"snapshot store failed at step 'seal attachment' {name} of snapshot {snapshot_id}: "
                         f"{len(data)} bytes is more than {MAX_BYTES}")
    nonce = os.urandom(12)
    header = HEADER.pack(MAGIC, VERSION, nonce)
    return header + AESGCM(key).encrypt(nonce, bytes(data), _aad(header, snapshot_id, name))


def open_sealed(snapshot_id: str, name: str, envelope: bytes, key: bytes) -> bytes:
    """The verified data of attachment `name` of `snapshot_id`; `AttachmentInvalid` otherwise."""
    if len(envelope) < HEADER.size + TAG_BYTES:
        raise AttachmentInvalid(f"{len(envelope)} bytes is too short")
    if len(envelope) > HEADER.size + MAX_BYTES + TAG_BYTES:
        raise AttachmentInvalid(f"{len(envelope)} bytes is too long")
    header = envelope[:HEADER.size]
    magic, version, nonce = HEADER.unpack(header)
    if magic != MAGIC:
        raise AttachmentInvalid("bad magic")
    if version != VERSION:
        raise AttachmentInvalid(f"unsupported attachment format version {version} (this build reads {VERSION})")
    try:
        return AESGCM(key).decrypt(nonce, envelope[HEADER.size:], _aad(header, snapshot_id, name))
    except InvalidTag:
        raise AttachmentInvalid("authentication failed (tampered, moved from another snapshot or name, "
                                "or sealed under another deployment secret)") from None
