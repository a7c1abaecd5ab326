"""Realign CPython's global dict version counter (deterministic SnapStart init only).

CPython 3.11 stamps every dict with a *version tag* (``ma_version_tag``, PEP 509) taken from
one global counter that every mutation of any dict increments. A new version of a handler
module mutates a few dicts more or fewer while it loads (one more global, one more interned
name), so every dict changed afterwards carries a tag one or two off the previous version's:
in the torch reference function a few such words in ~40 windows of 512 KiB that are otherwise
equal (README, "Snapshot store").

`realign` moves the counter forward to the next multiple of `QUANTUM` after the handler's code
is loaded, so what the module body and the rest of init do gets the same tags in both versions
(as long as neither crosses a multiple, which takes 16 million mutations). Moving it forward
is safe: a tag only has to differ from every earlier tag (the interpreter compares tags for
equality to know a dict did not change), never to be consecutive.

Finding the counter: a fresh dict's tag, read through ``/proc/self/mem`` (``ma_version_tag``
is the word after ``ma_used``, at byte 24 of the object), is the counter's value; the writable
file-backed mappings (the interpreter's static data) are searched for that aligned value, one
more mutation is made, and the one candidate that followed it to the dict's new tag is the
counter. Anything else (no or several candidates, another Python, an unreadable
``/proc/self/mem``) leaves it alone and returns False. Reads go through a buffer made first, in
pieces small enough that no allocation is large.
"""

from __future__ import annotations

import os
import sys

QUANTUM = 1 << 24
TAG_OFFSET = 24  # PyDictObject: ob_refcnt, ob_type, ma_used, ma_version_tag (CPython 3.11, 64-bit)
PIECE = 64 << 10
WORD = 8


def _tag(fd: int, probe: dict[int, int], word: bytearray) -> int:
    if os.preadv(fd, [word], id(probe) + TAG_OFFSET) != WORD:
        raise OSError("short read of a dict's version tag")
    return int.from_bytes(word, "little")


def writable_file_mappings(maps: str) -> list[tuple[int, int]]:
    """(start, end) of every private writable mapping of a file in a maps listing."""
    out = []
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue
        perms = fields[1]
        if perms[:2] == "rw" and perms[3] == "p":
            start, end = (int(part, 16) for part in fields[0].split("-"))
            out.append((start, end))
    return out


def realign(quantum: int = QUANTUM) -> bool:
    """Move the dict version counter to the next multiple of `quantum` (see the module doc);
    True if it was moved."""
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11) or sys.maxsize != 2**63 - 1:
        return False
    try:
        with open("/proc/self/maps") as maps:
            regions = writable_file_mappings(maps.read())
        fd = os.open("/proc/self/mem", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        word = bytearray(WORD)
        piece = bytearray(PIECE)
        probe: dict[int, int] = {}
        probe[0] = 0
        value = _tag(fd, probe, word)
        needle = value.to_bytes(WORD, "little")
        candidates = []
        for start, end in regions:
            for at in range(start, end, PIECE):
                size = min(PIECE, end - at)
                view = memoryview(piece)[:size]
                if os.preadv(fd, [view], at) != size:
                    break
                found = piece.find(needle, 0, size)
                while found >= 0:
                    if found % WORD == 0:
                        candidates.append(at + found)
                    found = piece.find(needle, found + 1, size)
                view.release()
        probe[1] = 1
        after = _tag(fd, probe, word)
        moved = []
        for address in candidates:
            if os.preadv(fd, [word], address) == WORD and int.from_bytes(word, "little") == after:
                moved.append(address)
        if after != value + 1 or len(moved) != 1:
            return False
        target = (after // quantum + 1) * quantum
        return os.pwrite(fd, target.to_bytes(WORD, "little"), moved[0]) == WORD
    except OSError:
        return False
    finally:
        os.close(fd)
