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

When the new code did take a pool more (a few hundred bytes of code objects at the end of a
pool), every pool the body takes afterwards is the next one in the arena: all of the body's
objects, and every pointer to them, one pool (16 KiB) further on (the stdlib reference
function: ~17,000 words of the arenas' windows, and most glibc heap and libpython windows
pointing there). So the barrier also uses up the arenas' unused pools (the statistics' ``N
unused pools``; each filled with blocks of the largest class, which has no free block left by
then): the body's first pool is then the first pool of a new arena, mapped at the same address
in both versions (arenas are mmapped top-down, and what was mapped before is the same).

Before all that, the interpreter's free lists are drained (`drain`): CPython keeps freed dicts,
lists, floats and small tuples (up to 80, 80, 100 and 2000 of each length) for reuse, and a
version's code leaves a few more or fewer of them; the body's first objects of those types
came from the free lists in one version and from obmalloc in the other, so its allocations of
those classes, and the order its pools were taken in, differed (pools of the body permuted).
The barrier takes as many of each as the statistics say are free (``N free PyDictObjects``
...) and keeps them.

Cost: the fillers take the free blocks of partly used pools (the holes earlier frees left)
and the arenas' unused pools (`Barrier.bytes`), memory the body would otherwise have used:
~0.4 MB of blocks for the stdlib reference function, and less than an arena (1 MiB) of pools;
over `MAX_BYTES` nothing is filled, over `MAX_POOLS` unused pools no pool is. What stays
version-dependent: glibc's heap (code objects over 512 bytes) and reference counts of shared
objects the new code refers to. Does nothing (None) on
anything but CPython 3.10+ with obmalloc's 32 classes of 16-byte steps, or if the statistics
cannot be read or parsed (e.g. ``PYTHONMALLOC=malloc``).
"""

from __future__ import annotations

import os
import re
import sys

CLASSES = 32
ALIGNMENT = 16
SLOTS = 512  # a class's list of fillers is a multiple of this long (4 KiB of pointers)
MAX_FILLERS = 1 << 22  # a statistics line asking for more is not believed
MAX_BYTES = 8 << 20  # more free blocks than this and the barrier is not worth its memory: nothing is filled
MAX_POOLS = 128  # more unused pools than this (2 MiB) and none is filled
POOL_OVERHEAD = 48  # obmalloc's pool header (CPython 3.10+, 64-bit), rounded up to ALIGNMENT
DRAIN_SLOTS = 8192  # the drained objects' list: fixed length; free lists asking for more are not drained
TUPLE_LENGTHS = 19  # CPython keeps free tuples of lengths 1..19 (PyTuple_MAXSAVESIZE - 1)
_FREE_OBJECTS = re.compile(r"^\s*(\d+) free (?:(\d+)-sized )?Py(Dict|Float|List|Tuple)Objects ", re.MULTILINE)
_UNUSED_POOLS = re.compile(r"^(\d+) unused pools \* (\d+) bytes", re.MULTILINE)


class Barrier:
    """The fillers one `barrier` allocated (kept alive by this object) and their bytes."""

    def __init__(self) -> None:
        self.fillers: list[list[object]] = []  # one list per size class
        self.count = 0
        self.bytes = 0
        self.pools = 0  # unused pools filled
        self.drained: list[object] = []  # objects taken off the interpreter's free lists


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


def unused_pools(stats: str) -> tuple[int, int] | None:
    """(unused pools of the allocated arenas, pool size) from the text of
    ``sys._debugmallocstats`` (its line ``N unused pools * SIZE bytes``); None if it has none."""
    found = _UNUSED_POOLS.search(stats)
    return (int(found.group(1)), int(found.group(2))) if found else None


def pool_fill(pools: tuple[int, int] | None) -> tuple[int, int]:
    """(fillers of the largest class that use up `pools`, i.e. (unused pools, pool size), and the
    fixed length of the list that keeps them, the same for any count); (0, 0) for more than
    `MAX_POOLS` or a pool size this does not know."""
    if pools is None:
        return 0, 0
    count, size = pools
    per_pool = (size - POOL_OVERHEAD) // (ALIGNMENT * CLASSES)
    if not 0 <= count <= MAX_POOLS or size != 16 << 10:
        return 0, 0
    return count * per_pool, MAX_POOLS * per_pool


def free_objects(stats: str) -> dict[tuple[str, int], int]:
    """(type, tuple length or 0) -> objects on that free list, from the text of
    ``sys._debugmallocstats`` (``N free PyDictObjects ...``, ``N free K-sized PyTupleObjects
    ...``); tuples only of the lengths CPython keeps, 1..`TUPLE_LENGTHS`."""
    out: dict[tuple[str, int], int] = {}
    for found in _FREE_OBJECTS.finditer(stats):
        count, length, kind = int(found.group(1)), int(found.group(2) or 0), found.group(3).lower()
        if kind == "tuple" and not 1 <= length <= TUPLE_LENGTHS:
            continue
        if count:
            out[(kind, length)] = count
    return out


def drain(done: Barrier, counts: dict[tuple[str, int], int], sources: list[list[None]]) -> None:
    """Take `counts` objects off the interpreter's free lists (see the module doc) into
    ``done.drained`` (made first, `DRAIN_SLOTS` long); `sources`: a list of each tuple length
    (index length - 1), made before the statistics were read. Nothing if they add up to more
    than `DRAIN_SLOTS`."""
    if sum(counts.values()) > DRAIN_SLOTS:
        return
    slots = done.drained
    at = 0
    half = 0.5
    for (kind, length), count in sorted(counts.items()):
        end = at + count
        if kind == "dict":
            while at < end:
                slots[at] = {}
                at += 1
        elif kind == "list":
            while at < end:
                slots[at] = []
                at += 1
        elif kind == "float":
            while at < end:
                slots[at] = half + half  # a new float each time
                at += 1
        else:
            source = sources[length - 1]
            while at < end:
                slots[at] = tuple(source)
                at += 1


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
    done = Barrier()
    done.drained = [None] * DRAIN_SLOTS
    sources = [[None] * length for length in range(1, TUPLE_LENGTHS + 1)]
    text = read_stats()
    if text is None:
        return None
    lists = free_objects(text)
    del text
    drain(done, lists, sources)
    del sources
    text = read_stats()  # again: draining took blocks of the classes those objects are in
    if text is None:
        return None
    counts = free_blocks(text)
    pool_fillers, pool_slots = pool_fill(unused_pools(text))
    del text
    if counts is None:
        return None
    plans = [(count, *fillers(size_class)) for size_class, count in sorted(counts.items())]
    done.count = sum(counts.values()) + pool_fillers
    done.bytes = sum(count * ALIGNMENT * (size_class + 1) for size_class, count in counts.items())
    done.bytes += pool_fillers * ALIGNMENT * CLASSES
    if done.bytes > MAX_BYTES:
        return None
    if pool_slots:  # after every class's free blocks: the largest class's blocks, whole pools of them
        plans.append((pool_fillers, *fillers(CLASSES - 1)))
        done.pools = pool_fillers // (pool_slots // MAX_POOLS)
    # each class's fillers go into a list made first, its length rounded up to SLOTS: a list
    # grown one filler at a time (or one exactly as long) would be a buffer whose size, and so
    # glibc's heap or the mmap layout after it, differs with the code by a few blocks; the pool
    # fillers' list always has room for MAX_POOLS pools (their count is what differs most)
    done.fillers = [[None] * (-(-count // SLOTS) * SLOTS) for count, *_ in plans[:len(counts)]]
    if pool_slots:
        done.fillers.append([None] * pool_slots)
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
