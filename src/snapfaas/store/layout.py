"""Chunk boundaries: where `ChunkStore.put_tree` cuts each file (pure functions, no I/O).

Two layouts:

* **fixed** (every file but CRIU page images): 512 KiB pieces from offset 0; the last is
  shorter.
* **page image** (``pages-<id>.img`` described by a ``pagemap-*.img`` of the same directory):
  CRIU writes the dumped pages of a process (or shared memory object) back to back, in address
  order, one run per pagemap entry. Cut at fixed offsets, one page more or fewer anywhere (a
  heap grown by 4 KiB, a stack page touched) would move every later boundary and change every
  later chunk. Instead the image is cut where the *memory* is cut::

      virtual memory   |....AAAAAAAA|AAAA..BBBBBB|BBBBBBBBBBBB|B...........|   | = 512 KiB multiple
      pagemap entries       [ A: vaddr, 12 pages ]  [ B: vaddr, 19 pages ]     of the address
      pages-1.img      [AAAAAAAA|AAAA|BBBBBB|BBBBBBBBBBBB|B]
      chunks            <-1----> <2-> <-3--> <----4-----> 5    each ≤ 512 KiB, never across
                                                                an entry or a 512 KiB multiple

  A chunk then holds the pages of one 512 KiB-aligned window of one mapping, so two snapshots
  whose memory is equal in that window (same addresses, same bytes: a deterministic init, see
  README "SnapStart determinism") get the same chunk, whatever else moved. Pieces are variable
  length (≤ `CHUNK_SIZE`, a multiple of the page size); `FileEntry.covering` works on any.

* **packed** (regular files of 1..`PACK_MAX` bytes that are not page images: CRIU's ~30
  small images, runc's ``descriptors.json``, the small tmpfs tars): concatenated in tree
  order into shared chunks of at most `CHUNK_SIZE` (`pack_groups`), each file a slice of one.
  A few of them differ in every dump (``stats-dump``, ``inventory``, ``timens``, ``cgroup``,
  ``files``, ``mountpoints``, ``pipes-data``, the ``/dev`` tars: times, pids, inode numbers,
  sandbox paths), so one chunk per file made ~10 new chunks per version whatever the code
  change; packed they make one (57 KiB of them in all for the stdlib function).

Pagemap image (CRIU ``images/pagemap.proto``; the two magics, then protobuf messages each
preceded by its u32 little-endian length): the first message is ``pagemap_head {pages_id}``
(the pages image is ``pages-<pages_id>.img``), then one ``pagemap_entry {vaddr, nr_pages,
in_parent, flags}`` per run. A run has bytes in the pages image iff ``flags`` has
``PE_PRESENT`` (images without ``flags``: iff not ``in_parent``). If a pagemap does not parse
or its present pages do not add up to exactly the pages image's size, that image gets the fixed
layout (never a failed put: the layout only affects dedup, not correctness).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping

from snapfaas.store.codec import CHUNK_SIZE

PAGE_SIZE = 4096
WINDOW = CHUNK_SIZE  # page-image chunks never cross a multiple of this in the address space
PE_PARENT, PE_LAZY, PE_PRESENT = 1, 2, 4
PAGEMAP = re.compile(r"pagemap-.+\.img")
MAGICS = 8  # IMG_COMMON_MAGIC + PAGEMAP_MAGIC


PACK_MAX = 64 << 10  # regular files up to this size (not page images) are packed into shared chunks


def pack_groups(sizes: list[int], chunk: int = CHUNK_SIZE) -> list[list[int]]:
    """Indexes of `sizes` (files to pack, each 1..`chunk` bytes, in tree order) grouped into
    consecutive runs whose sizes add up to at most `chunk`: one shared chunk per group."""
    groups: list[list[int]] = []
    total = chunk + 1
    for index, size in enumerate(sizes):
        if total + size > chunk:
            groups.append([])
            total = 0
        groups[-1].append(index)
        total += size
    return groups


class LayoutError(ValueError):
    """A pagemap image that does not parse."""


def fixed_pieces(size: int, chunk: int = CHUNK_SIZE) -> list[tuple[int, int]]:
    """(offset, length) of consecutive `chunk`-sized pieces covering ``[0, size)``."""
    return [(offset, min(chunk, size - offset)) for offset in range(0, size, chunk)]


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise LayoutError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _fields(message: bytes) -> dict[int, int]:
    """The varint fields of a protobuf message (every pagemap field is one); others rejected."""
    out: dict[int, int] = {}
    at = 0
    while at < len(message):
        key, at = _varint(message, at)
        if key & 7 != 0:
            raise LayoutError(f"field {key >> 3} has wire type {key & 7}, not varint")
        out[key >> 3], at = _varint(message, at)
    return out


def parse_pagemap(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """(pages_id, [(vaddr, nr_pages) of every run with bytes in the pages image, in order])."""
    at = MAGICS
    messages: list[dict[int, int]] = []
    while at < len(data):
        if at + 4 > len(data):
            raise LayoutError("truncated message length")
        (length,) = struct.unpack_from("<I", data, at)
        at += 4
        if at + length > len(data):
            raise LayoutError("truncated message")
        messages.append(_fields(data[at:at + length]))
        at += length
    if not messages or 1 not in messages[0]:
        raise LayoutError("no pagemap head")
    runs = []
    for entry in messages[1:]:
        if 1 not in entry or 2 not in entry:
            raise LayoutError("entry without vaddr or nr_pages")
        vaddr, pages = entry[1], entry[2]
        present = bool(entry[4] & PE_PRESENT) if 4 in entry else not entry.get(3, 0)
        if vaddr % PAGE_SIZE:
            raise LayoutError(f"vaddr {vaddr:#x} is not page aligned")
        if present and pages:
            runs.append((vaddr, pages))
    return messages[0][1], runs


def page_image_pieces(runs: Iterable[tuple[int, int]], window: int = WINDOW) -> list[tuple[int, int]]:
    """(offset, length) pieces of a pages image holding `runs` back to back: cut at every run
    boundary and wherever the address crosses a multiple of `window` (see the module doc)."""
    pieces = []
    offset = 0
    for vaddr, pages in runs:
        address, end = vaddr, vaddr + pages * PAGE_SIZE
        while address < end:
            cut = min(end, (address // window + 1) * window)
            pieces.append((offset, cut - address))
            offset += cut - address
            address = cut
    return pieces


def plan(files: Mapping[str, bytes], sizes: Mapping[str, int]) -> dict[str, list[tuple[int, int]]]:
    """Page-image pieces for a snapshot directory: `files` maps the relative path of each
    top-level ``pagemap-*.img`` to its bytes, `sizes` every regular file's relative path to its
    size. Returns pieces for each pages image a pagemap describes exactly; every other file
    (and any image whose pagemap is broken or disagrees with its size) is absent: fixed layout."""
    out: dict[str, list[tuple[int, int]]] = {}
    for path, data in sorted(files.items()):
        try:
            pages_id, runs = parse_pagemap(data)
        except LayoutError:
            continue
        target = f"pages-{pages_id}.img"
        pieces = page_image_pieces(runs)
        if target in sizes and target not in out and sum(length for _, length in pieces) == sizes[target]:
            out[target] = pieces
    return out
