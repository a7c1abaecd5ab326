"""Snapshot store: 512 KiB content-addressed chunks, dedup, compression, convergent encryption,
cache tiers. Only this package knows chunk, manifest and attachment formats.

::

    snapshot tree (CRIU images, /tmp contents)          ChunkStore.put_tree / materialize / read
          │  cut into chunks of ≤ 512 KiB (`layout`): CRIU page images along the memory they
          │  hold (never across a pagemap entry or a 512 KiB multiple of the address), other
          │  files every 512 KiB; all-zero chunk = hole (recorded, never stored)
          ▼
    chunk plaintext ──h = SHA-256──► name = HMAC(K_name, h)    key = HMAC(K_key, h)
          │ zstd (if smaller) → AES-256-GCM(key, nonce = HMAC(key, payload))      [codec]
          ▼
    ┌─────────────┐  miss  ┌──────────────────┐  miss  ┌─────────────────────────────────────┐
    │ memory      │ ─────► │ disk cache       │ ─────► │ origin: directory or S3             │
    │ plaintext   │ ◄───── │ sealed blobs     │ ◄───── │   chunks/<name>                     │
    │ LRU, bytes  │ promote│ LRU, bytes budget│ promote│   manifests/<snapshot-id>           │
    │ budget      │        │ + copies, used   │        │   attachments/<snapshot-id>/<name>  │
    │ (chunks     │        │ only while the   │        │ (no budget; `collect` GCs)          │
    │  only)      │        │ origin is down:  │        └─────────────────────────────────────┘
    └─────────────┘        │ manifests/<id>   │
                           │ attachments/<id>/│
                           │   <name>         │
                           └──────────────────┘
    every hit is verified (hash / AEAD tag + hash + name); a bad copy in a cache tier is
    evicted and read from below; a bad or missing chunk at the origin is `ChunkUnavailable`

Attachments are a snapshot's small named documents (e.g. ``workingset``, its recorded working
set): sealed like the manifest but under their own key, bound to the snapshot id and name,
rewritable (last writer wins), deleted and garbage-collected with the manifest.

Chunk blob (`codec`)::

    +------+-------+-------+------------------+----------------------------------+
    | SFCK | ver 1 | codec | nonce (12 bytes) | AES-256-GCM(payload) || tag (16) |
    +------+-------+-------+------------------+----------------------------------+
      4 B    1 B     1 B     AAD = these first 18 bytes; codec 0 raw, 1 zstd

Manifest envelope (`manifest`)::

    +----------+-------+-------------+--------+----------------------------+---------+
    | SFMANIFT | ver 1 | nonce (12)  | n u32  | AES-256-GCM(JSON body)+tag | SHA-256 |
    +----------+-------+-------------+--------+----------------------------+---------+
      AAD = header || snapshot id; GCM tag = the MAC; SHA-256 = checksum of all before it
    body: {format: 3, snapshot, chunk_size (the maximum), created, meta,
           files: [{path, type: file|dir|symlink, mode, size,
                    chunks: [[offset, length, name|null, h|null, stored bytes], ...]}]}
                                            (name = null: a hole, read back as zeros)
           a packed small file: chunks: [[0, size, name, h, stored, at, chunk length]]
                                            (its bytes: chunk[at:at + size], see `layout`)

Attachment envelope (`attachment`)::

    +----------+-------+-------------+-----------------------------+
    | SFATTACH | ver 1 | nonce (12)  | AES-256-GCM(data) + tag 16  |
    +----------+-------+-------------+-----------------------------+
      AAD = header || snapshot id || 0x00 || name

Page image chunks (`layout`)::

    virtual memory   |....AAAAAAAA|AAAA..BBBBBB|BBBBBBBBBBBB|B...........|   | = 512 KiB multiple
    pagemap entries       [ A: vaddr, 12 pages ]  [ B: vaddr, 19 pages ]
    pages-1.img      [AAAAAAAA|AAAA|BBBBBB|BBBBBBBBBBBB|B]     (CRIU: present pages back to back)
    chunks            <-1----> <2-> <-3--> <----4-----> 5      equal memory window → equal chunk

Modules: `codec` (chunk sealing, keys), `layout` (where files are cut), `manifest` (envelope,
body, validation), `attachment` (attachment envelope, names), `tiers` (memory and disk caches,
counters), `origin` (directory and S3 origins), `fence` (GC vs concurrent writes),
`chunkstore` (the API), `stats` (reports), `errors`.
"""

from snapfaas.store.chunkstore import ChunkStore, open_store
from snapfaas.store.codec import CHUNK_SIZE, ChunkCodec, load_or_create_secret
from snapfaas.store.errors import ChunkUnavailable, ManifestInvalid, SnapshotExists, SnapshotMissing, StoreError
from snapfaas.store.manifest import ChunkRef, FileEntry, Manifest
from snapfaas.store.origin import AttachmentInfo, DirectoryOrigin, Origin, OriginError, S3Origin, origin_from_url
from snapfaas.store.stats import CollectReport, SnapshotStats, StoreStats
from snapfaas.store.tiers import TierCounters, TierUsage

__all__ = [
    "AttachmentInfo", "CHUNK_SIZE", "ChunkCodec", "ChunkRef", "ChunkStore", "ChunkUnavailable", "CollectReport", "DirectoryOrigin",
    "FileEntry", "Manifest", "ManifestInvalid", "Origin", "OriginError", "S3Origin", "SnapshotExists",
    "SnapshotMissing", "SnapshotStats", "StoreError", "StoreStats", "TierCounters", "TierUsage",
    "load_or_create_secret", "open_store", "origin_from_url",
]
