"""An allocation barrier between a handler module's code and what its body allocates
(deterministic SnapStart init only).

CPython's small-object allocator (obmalloc: blocks of 16..512 bytes in 32 size classes, carved
from pools of one class each) hands out a class's next block from that class's partly used
pools, and takes a fresh pool only when none has a free block left. A new version of a
handler module differs in its code objects (a constant more, a longer bytecode string):
loading them uses a block more or less of a few classes, so everything its body allocates
afterwards in those classes (the stdlib reference function's 20,000-entry table, a model's
parameters) lands one block further on, and every page holding or pointing at those objects
differs from the previous version's (README, "Snapshot store").

`barrier` ends that dependence for what is allocated after it: it reads how many free blocks
each class has in its pools (``sys._debugmallocstats``, which CPython prints to fd 2: caught
in a memfd) and allocates exactly that many filler objects of each class, kept for the life of
the process. After it, each class's next allocation takes a fresh pool, whatever the code
loaded before took; the pools come from the arenas in a fixed order, so they are the same
pools as long as the code did not need a pool more (a few hundred bytes of code objects
rarely do). The filling loops allocate nothing in obmalloc but fillers and their counters
(the lists that keep the fillers are made first, at sizes that do not depend on the counts'
last digits).

Cost: the fillers take the free blocks of partly used pools (the holes earlier frees left;
`Barrier.bytes`), memory the body would otherwise have reused: ~0.4 MB (3% of the runtime's
pages) for the stdlib reference function; over `MAX_BYTES` nothing is filled. What stays
version-dependent: glibc's heap (code objects over 512 bytes) and reference counts of shared
objects the new code refers to. Does nothing (None) on
anything but CPython 3.10+ with obmalloc's 32 classes of 16-byte steps, or if the statistics
cannot be read or parsed (e.g. ``PYTHONMALLOC=malloc``).
"""

from __future__ import annotations

import os
import sys

CLASSES = 32
ALIGNMENT = 16
SLOTS = 512  # a class's list of fillers is a multiple of this long (4 KiB of pointers)
MAX_FILLERS = 1 << 22  # a statistics line asking for more is not believed
MAX_BYTES = 8 << 20  # more free blocks than this and the barrier is not worth its memory: nothing is filled


class Barrier:
    """The fillers one `barrier` allocated (kept alive by this object) and their bytes."""

    def __init__(self) -> None:
        self.fillers: list[list[object]] = []  # one list per size class
        self.count = 0
        self.bytes = 0


_KEPT: list[Barrier] = []  # the fillers must outlive the body's objects: kept for the process's life


def free_blocks(stats: str) -> dict[int, int] | None:
    """Size class -> free blocks in its pools, from the text of ``sys._debugmallocstats``
    (its table ``class size num-pools blocks-in-use avail-blocks``); None if it has no such
    table or a class's size is not 16 * (class + 1)."""
    out: dict[int, int] = {}
    table = False
    for line in stats.splitlines():
        fields = line.split()
        if fields[:3] == ["class", "size", "num"]:
            table = True
            continue
        if not table:
            continue
        if fields and set(fields[0]) == {"-"}:
            continue
        if len(fields) != 5 or not all(field.isdigit() for field in fields):
            break
        size_class, size, _, _, avail = map(int, fields)
        if size != ALIGNMENT * (size_class + 1) or not 0 <= size_class < CLASSES or avail > MAX_FILLERS:
            return None
        out[size_class] = avail
    return out if table else None


def read_stats() -> str | None:
    """What ``sys._debugmallocstats`` prints (to fd 2, caught in a memfd), or None."""
    debug = getattr(sys, "_debugmallocstats", None)
    if debug is None or not hasattr(os, "memfd_create"):
        return None
    try:
        sink = os.memfd_create("snapfaas-mallocstats", os.MFD_CLOEXEC)
    except OSError:
        return None
    try:
        saved = os.dup(2)
        try:
            os.dup2(sink, 2)
            debug()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        size = os.lseek(sink, 0, os.SEEK_END)
        return os.pread(sink, size, 0).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(sink)


def fillers(size_class: int) -> tuple[object, object, int]:
    """(a template, an operand, a kind) from which `_fill` makes new objects of `size_class`'s
    block size without allocating anything else in obmalloc."""
    block = ALIGNMENT * (size_class + 1)
    if block == 16:
        return object, None, 0  # object(): 16 bytes
    if block == 32:
        return 1 << 40, 1, 1  # a two-digit int (32 bytes): a new one for every sum
    return b"", block - sys.getsizeof(b""), 2  # bytes(n): the bytes header, n bytes and a NUL


def barrier() -> Barrier | None:
    """Fill every free block of every obmalloc size class (see the module doc); the fillers are
    kept for the process's life. None if the allocator's statistics are not available."""
    if sys.implementation.name != "cpython" or sys.version_info < (3, 10):
        return None
    text = read_stats()
    counts = free_blocks(text) if text is not None else None
    del text
    if counts is None:
        return None
    done = Barrier()
    plans = [(count, *fillers(size_class)) for size_class, count in sorted(counts.items())]
    done.count = sum(counts.values())
    done.bytes = sum(count * ALIGNMENT * (size_class + 1) for size_class, count in counts.items())
    if done.bytes > MAX_BYTES:
        return None
    # each class's fillers go into a list made first, its length rounded up to SLOTS: a list
    # grown one filler at a time (or one exactly as long) would be a buffer whose size, and so
    # glibc's heap or the mmap layout after it, differs with the code by a few blocks
    done.fillers = [[None] * (-(-count // SLOTS) * SLOTS) for count, *_ in plans]
    for (count, template, operand, kind), slots in zip(plans, done.fillers):  # from here on only fillers (and loop counters)
        _fill(slots, count, template, operand, kind)
    _KEPT.append(done)
    return done


def _fill(slots: list[object], count: int, template: object, operand: object, kind: int) -> None:
    """Put `count` new objects made from (`template`, `operand`, `kind`: `fillers`) into the
    first `count` of `slots`."""
    if kind == 0:
        for index in range(count):
            slots[index] = template()  # type: ignore[operator]
    elif kind == 1:
        for index in range(count):
            slots[index] = template + operand  # type: ignore[operator]
    else:
        for index in range(count):
            slots[index] = bytes(operand)  # type: ignore[call-overload]
