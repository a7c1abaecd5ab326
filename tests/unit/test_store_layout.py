"""Where the store cuts files (`store.layout`): CRIU page images along the memory they hold,
everything else at fixed 512 KiB offsets. Pure functions, plus one put through a real store
showing why: a page added low in memory leaves every other chunk as it was."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from snapfaas.store import CHUNK_SIZE, ChunkStore, DirectoryOrigin
from snapfaas.store.layout import (
    PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT, LayoutError, fixed_pieces, pack_groups, page_image_pieces, parse_pagemap, plan,
)

KiB = 1024
MAGICS = struct.pack("<II", 0x54564319, 0x56084025)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _message(**fields: int) -> bytes:
    numbers = {"pages_id": 1, "vaddr": 1, "nr_pages": 2, "in_parent": 3, "flags": 4}
    body = b"".join(_varint(numbers[name] << 3) + _varint(value) for name, value in fields.items())
    return struct.pack("<I", len(body)) + body


def pagemap(pages_id: int, runs: list[tuple[int, int]], flags: int = PE_PRESENT | PE_LAZY) -> bytes:
    """A CRIU pagemap image: head, then one entry per (vaddr, nr_pages) run."""
    return MAGICS + _message(pages_id=pages_id) + b"".join(_message(vaddr=v, nr_pages=n, flags=flags) for v, n in runs)


def test_fixed_pieces_cover_a_file_in_chunk_size_steps() -> None:
    assert fixed_pieces(0) == []
    assert fixed_pieces(CHUNK_SIZE) == [(0, CHUNK_SIZE)]
    assert fixed_pieces(2 * CHUNK_SIZE + 5) == [(0, CHUNK_SIZE), (CHUNK_SIZE, CHUNK_SIZE), (2 * CHUNK_SIZE, 5)]


def test_page_image_pieces_never_cross_a_run_or_a_window_of_the_address_space() -> None:
    base = 0x7F0000000000
    runs = [(base + CHUNK_SIZE - 2 * PAGE_SIZE, 4), (base + 8 * CHUNK_SIZE, 1), (base + 10 * CHUNK_SIZE, 300)]
    pieces = page_image_pieces(runs)
    assert pieces == [
        (0, 2 * PAGE_SIZE), (2 * PAGE_SIZE, 2 * PAGE_SIZE),        # run 1 straddles a 512 KiB multiple
        (4 * PAGE_SIZE, PAGE_SIZE),                                # run 2: one page
        (5 * PAGE_SIZE, CHUNK_SIZE), (5 * PAGE_SIZE + CHUNK_SIZE, CHUNK_SIZE),  # run 3: 128 + 128 + 44 pages
        (5 * PAGE_SIZE + 2 * CHUNK_SIZE, 44 * PAGE_SIZE),
    ]
    assert sum(length for _, length in pieces) == (4 + 1 + 300) * PAGE_SIZE
    assert all(0 < length <= CHUNK_SIZE for _, length in pieces)


def test_parse_pagemap_keeps_only_runs_with_bytes_in_the_pages_image() -> None:
    data = (MAGICS + _message(pages_id=7) + _message(vaddr=0x1000, nr_pages=2, flags=PE_PRESENT)
            + _message(vaddr=0x9000, nr_pages=3, flags=PE_PARENT) + _message(vaddr=0x20000, nr_pages=1, flags=PE_PRESENT | PE_LAZY)
            + _message(vaddr=0x30000, nr_pages=5, in_parent=0) + _message(vaddr=0x40000, nr_pages=5, in_parent=1))
    assert parse_pagemap(data) == (7, [(0x1000, 2), (0x20000, 1), (0x30000, 5)])


@pytest.mark.parametrize("data", [
    b"", MAGICS, MAGICS + b"\x05\x00\x00\x00\x08", MAGICS + _message(pages_id=1) + b"\x02\x00\x00\x00\x08\x80",
    MAGICS + _message(pages_id=1) + struct.pack("<I", 2) + b"\x0a\x00",  # a length-delimited field
    MAGICS + _message(pages_id=1) + _message(vaddr=0x1001, nr_pages=1, flags=PE_PRESENT),
])
def test_a_broken_pagemap_is_a_layout_error(data: bytes) -> None:
    with pytest.raises(LayoutError):
        parse_pagemap(data)


def test_plan_covers_only_page_images_whose_pagemap_adds_up() -> None:
    runs = [(0x555555554000, 3), (0x7FFFF7000000, 200)]
    good = pagemap(1, runs)
    sizes = {"pages-1.img": 203 * PAGE_SIZE, "pages-2.img": 10 * PAGE_SIZE, "core-1.img": 100, "pagemap-1.img": len(good),
             "pagemap-6.img": 0, "pagemap-9.img": 0}
    planned = plan({"pagemap-1.img": good, "pagemap-6.img": pagemap(2, [(0x1000, 11)]), "pagemap-9.img": b"junk"}, sizes)
    assert planned == {"pages-1.img": page_image_pieces(runs)}  # pages-2.img: 11 pages listed, 10 present


def _pages(runs: list[tuple[int, int]], seed: int) -> bytes:
    """Page contents that depend only on the address (equal memory at equal addresses)."""
    out = bytearray()
    for vaddr, count in runs:
        for page in range(count):
            address = vaddr + page * PAGE_SIZE
            out += (address.to_bytes(8, "little") + seed.to_bytes(8, "little")) * (PAGE_SIZE // 16)
    return bytes(out)


def _image_dir(path: Path, runs: list[tuple[int, int]]) -> Path:
    path.mkdir()
    (path / "pagemap-1.img").write_bytes(pagemap(1, runs))
    (path / "pages-1.img").write_bytes(_pages(runs, 1))
    (path / "core-1.img").write_bytes(b"registers" * 300)
    return path


def test_a_page_added_low_in_memory_changes_only_its_own_chunk(tmp_path: Path) -> None:
    heap, libs = 0x555555560000, 0x7FFFF0000000
    v1 = _image_dir(tmp_path / "v1", [(heap, 100), (libs, 3000)])
    v2 = _image_dir(tmp_path / "v2", [(heap, 101), (libs, 3000)])  # the heap grew by a page: the rest moved in the file
    store = ChunkStore(DirectoryOrigin(tmp_path / "origin"), bytes(range(32)), cache_dir=None)
    try:
        one, two = store.put_tree("fn-1-a", v1), store.put_tree("fn-2-b", v2)
        new = two.names() - one.names()
        pages = two.file("pages-1.img")
        assert pages is not None and pages.size == 3101 * PAGE_SIZE
        assert [ref.length for ref in pages.chunks[:3]] == [(0x555555580000 - heap), 101 * PAGE_SIZE - (0x555555580000 - heap), CHUNK_SIZE]
        pagemap_entry = two.file("pagemap-1.img")
        assert pagemap_entry is not None
        # the window that grew, and the pagemap's chunk (packed with the other small image)
        assert new == {pages.chunks[1].name, pagemap_entry.chunks[0].name}
        assert len(new) / len(two.names()) <= 0.1
        rebuilt = tmp_path / "rebuilt"
        store.materialize("fn-2-b", rebuilt)
        assert (rebuilt / "pages-1.img").read_bytes() == (v2 / "pages-1.img").read_bytes()
        assert store.read("fn-2-b", "pages-1.img", 99 * PAGE_SIZE, 4 * PAGE_SIZE) == (v2 / "pages-1.img").read_bytes()[99 * PAGE_SIZE:103 * PAGE_SIZE]
    finally:
        store.close()


def test_a_page_image_that_disagrees_with_its_pagemap_is_cut_fixed(tmp_path: Path) -> None:
    images = _image_dir(tmp_path / "v1", [(0x555555560000, 300)])
    with open(images / "pages-1.img", "ab") as out:
        out.write(b"x")  # one byte more than the pagemap says: the layout is not trusted
    store = ChunkStore(DirectoryOrigin(tmp_path / "origin"), bytes(range(32)), cache_dir=None)
    try:
        entry = store.put_tree("fn-1-a", images).file("pages-1.img")
        assert entry is not None and [ref.length for ref in entry.chunks] == [CHUNK_SIZE, CHUNK_SIZE, 300 * PAGE_SIZE + 1 - 2 * CHUNK_SIZE]
    finally:
        store.close()


def test_pack_groups_are_consecutive_runs_of_at_most_a_chunk() -> None:
    assert pack_groups([]) == []
    assert pack_groups([10, 20, 30], chunk=60) == [[0, 1, 2]]
    assert pack_groups([10, 20, 31, 60, 1], chunk=60) == [[0, 1], [2], [3], [4]]
