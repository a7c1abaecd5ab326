"""Re-key glibc's pointer guard and stack canary of this process (deterministic SnapStart init only).

glibc mangles the function pointers it keeps in writable memory (``atexit``/``__cxa_atexit``
entries, ``setjmp`` buffers, gconv steps...)::

    mangled = rol64(pointer XOR guard, 17)        (x86-64, ``PTR_MANGLE``)

with a per-process *pointer guard* that the dynamic loader takes from the kernel's AT_RANDOM
bytes at every exec (bytes 8..16; bytes 0..8 are the stack canary). So two inits of identical
code differ wherever such an entry lies: torch's C++ libraries register thousands of static
destructors, whose 1 KiB blocks of mangled entries are scattered over the heap, and each of
those heap windows becomes a new chunk in the store (README, "Snapshot store").

`rekey` replaces the guard with a value fixed per function (`snapshot.determinism`), in pid 1
of a deterministic init before it forks the runtime (which inherits it), while only the
interpreter's start-up has run and the process has one thread:

1. AT_RANDOM's address comes from ``/proc/self/auxv``; the old guard from its bytes 8..16.
2. Every private, non-executable mapping is read through ``/proc/<pid>/mem`` (by a forked
   child, see `rekey`). A word that
   demangles under the old guard to an address inside an executable mapping or the stack
   (``setjmp`` buffers mangle stack pointers too) is a mangled
   pointer (a random word does so with probability ~2^-38 per word here); a word equal to the
   old guard is a copy of it (the thread control block's ``fs:0x30``, the loader's own copy).
3. Unless the thread control block (canary and guard at 0x28, pointers to itself at 0 and
   0x10) was found exactly once, nothing is
   written (the init is then just less deterministic). Otherwise each found word is rewritten
   in place (8-byte writes through ``/proc/<pid>/mem``, which also reaches the loader's
   read-only copy) with the pointer re-mangled under the new guard, and AT_RANDOM's bytes
   8..16 with the new guard.

Between the scan and the last write the process does nothing (one thread, waiting for the
child), so no pointer is mangled or demangled meanwhile.

The **stack canary** (``fs:0x28``: AT_RANDOM's bytes 0..8 with the low byte zeroed) is
re-keyed the same way when `rekey` is given a new one: every active C frame compiled with a
stack protector holds a copy of it, which its epilogue compares with ``fs:0x28``, so every
aligned word equal to the old canary (found by the same scan: the stacks and every other
private mapping; a random word matches with probability 2^-56) is rewritten with the new value
together with the thread control block's and AT_RANDOM's bytes 0..8. The waiting process's
registers hold no copy: compilers load the canary into a register only within a prologue or
epilogue, and clear it after the store. Left random, the canary made a few stack pages and the
control block's page differ in every init (README, "Snapshot store"). Only x86-64 is handled;
elsewhere `rekey` does nothing.
"""

from __future__ import annotations

import os
import platform
import re
import struct

AT_RANDOM = 25
MASK = (1 << 64) - 1
WORD = struct.Struct("<Q")
SKIP = ("[vvar]", "[vsyscall]", "[vvar_vclock]")


def mangle(pointer: int, guard: int) -> int:
    value = (pointer ^ guard) & MASK
    return ((value << 17) | (value >> 47)) & MASK


def demangle(word: int, guard: int) -> int:
    return (((word >> 17) | (word << 47)) & MASK) ^ guard


def at_random_address(auxv: bytes) -> int | None:
    for key, value in struct.iter_unpack("<QQ", auxv[: len(auxv) // 16 * 16]):
        if key == AT_RANDOM:
            return value
    return None


def mappings(maps: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(private non-executable mappings to scan, what a mangled pointer may point into: the
    executable mappings and the main thread's stack) of a maps listing. ``setjmp`` buffers
    (e.g. the one ``__libc_start_main`` keeps on the stack for thread cancellation) mangle the
    stack and frame pointers as well as the return address: left mangled under the old guard,
    a ``longjmp`` to them would land on a wrong stack, and they made the stack differ in every
    init."""
    scan, code = [], []
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 5:
            continue
        start, end = (int(part, 16) for part in fields[0].split("-"))
        perms, name = fields[1], fields[5].strip() if len(fields) > 5 else ""
        if "x" in perms or name == "[stack]":
            code.append((start, end))
        if "x" not in perms and perms[3] == "p" and "r" in perms and name not in SKIP:
            scan.append((start, end))
    return scan, code


def find_words(data: bytes, base: int, old: int, code: list[tuple[int, int]]) -> dict[int, tuple[str, int]]:
    """Address -> (kind, value) of every aligned word in `data` (read at `base`) that is a copy
    of the guard `old` (``guard``) or a pointer into `code` mangled with it (``mangled``)."""
    found = aligned_copies(data, base, old, "guard")
    # a pointer below 2**47 XOR the guard has the guard's top 17 bits, which rol 17 puts at the bottom
    low = WORD.pack(rotated_low(old))[:2]
    for match in re.finditer(re.escape(low), data):
        at = match.start()
        if at % 8 or at + 8 > len(data):
            continue
        (word,) = WORD.unpack_from(data, at)
        pointer = demangle(word, old)
        if any(start <= pointer < end for start, end in code):
            found[base + at] = ("mangled", pointer)
    return found


def find_canaries(data: bytes, base: int, canary: int) -> dict[int, tuple[str, int]]:
    """Address -> (``canary``, `canary`) of every aligned word in `data` (read at `base`) equal
    to the stack canary `canary`: the copies active frames hold, and the thread control block's."""
    return aligned_copies(data, base, canary, "canary")


def aligned_copies(data: bytes, base: int, value: int, kind: str) -> dict[int, tuple[str, int]]:
    """Address -> (`kind`, `value`) of every 8-byte aligned word in `data` (read at `base`)
    equal to `value`."""
    found: dict[int, tuple[str, int]] = {}
    needle = WORD.pack(value)
    at = data.find(needle)
    while at >= 0:
        if at % 8 == 0:
            found[base + at] = (kind, value)
        at = data.find(needle, at + 1)
    return found


def rotated_low(guard: int) -> int:
    return guard >> 47


def count_thread_blocks(data: bytes, base: int, pair: bytes) -> int:
    """How many thread control blocks `data` (read at `base`) holds with (canary, guard) =
    `pair` at ``0x28``: glibc's x86-64 ``tcbhead_t`` starts with two pointers to itself (``tcb``
    at 0, ``self`` at 0x10), which copies of the pair elsewhere (e.g. in read buffers) lack."""
    count = 0
    for match in re.finditer(re.escape(pair), data):
        head = match.start() - 0x28
        if head < 0 or head % 8:
            continue
        own = base + head
        if WORD.unpack_from(data, head)[0] == own and WORD.unpack_from(data, head + 0x10)[0] == own:
            count += 1
    return count


def canary_value(word: int) -> int:
    """A stack canary as glibc makes one of 8 random bytes: the low byte zeroed (so that a
    string overflow of a frame cannot write the canary back)."""
    return word & ~0xFF & MASK


def rekey(new_guard: int, new_canary: int | None = None) -> bool:
    """Replace this process's pointer guard with `new_guard`, and with `new_canary` its stack
    canary (its low byte is zeroed: `canary_value`), see the module doc; True if done, False if
    this platform or process does not allow it (nothing written).

    The scan and the writes run in a forked child, on this process's memory through
    ``/proc/<pid>/mem``, while this process waits for it: the buffers, dicts and integers of
    the scan (copies of random words among them) stay out of this process's memory, which the
    snapshot keeps."""
    if platform.machine() != "x86_64":
        return False
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        try:
            code = 0 if _rekey(parent, new_guard, new_canary) else 1
        except BaseException:  # never let the child return into the caller's code
            code = 2
        os._exit(code)
    _, status = os.waitpid(child, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _rekey(pid: int, new_guard: int, new_canary: int | None = None) -> bool:
    """`rekey` of process `pid` (stopped in a wait for the caller), from outside it."""
    try:
        with open(f"/proc/{pid}/auxv", "rb") as auxv:
            address = at_random_address(auxv.read())
        with open(f"/proc/{pid}/maps") as maps:
            scan, code = mappings(maps.read())
        fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    except OSError:
        return False
    try:
        if address is None:
            return False
        at_random = os.pread(fd, 16, address)
        if len(at_random) != 16:
            return False
        canary = canary_value(WORD.unpack_from(at_random, 0)[0])
        (old,) = WORD.unpack_from(at_random, 8)
        found: dict[int, tuple[str, int]] = {}
        tcb = 0
        pair = WORD.pack(canary) + WORD.pack(old)
        for start, end in scan:
            try:
                data = os.pread(fd, end - start, start)
            except OSError:  # a mapping that cannot be read (e.g. PROT_NONE guard pages)
                continue
            found.update(find_words(data, start, old, code))
            if new_canary is not None:
                found.update(find_canaries(data, start, canary))
            tcb += count_thread_blocks(data, start, pair)
        at_random_words = range(address, address + 16)
        found = {where: item for where, item in found.items() if where not in at_random_words and where + 7 not in at_random_words}
        if tcb != 1:
            return False
        for where, (kind, value) in found.items():
            if kind == "canary":
                word = canary_value(new_canary or 0)
            else:
                word = new_guard if kind == "guard" else mangle(value, new_guard)
            os.pwrite(fd, WORD.pack(word), where)
        if new_canary is not None:
            os.pwrite(fd, WORD.pack(canary_value(new_canary)), address)
        os.pwrite(fd, WORD.pack(new_guard), address + 8)
        return True
    finally:
        os.close(fd)
