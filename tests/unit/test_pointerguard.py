"""glibc pointer guard re-keying (runtime/pointerguard.py): mangling arithmetic, what a scan
finds, and a real re-key of a child interpreter whose C atexit entry must still run."""

from __future__ import annotations

import platform
import struct
import subprocess
import sys
import textwrap

import pytest

from snapfaas.runtime import pointerguard

GUARD = 0x0123456789ABCDEF


def test_mangle_and_demangle_are_inverse_and_match_glibc_x86_64() -> None:
    pointer = 0x7FFFF7A12345
    word = pointerguard.mangle(pointer, GUARD)
    value = pointer ^ GUARD
    assert word == ((value << 17) | (value >> 47)) & pointerguard.MASK
    assert pointerguard.demangle(word, GUARD) == pointer


def test_auxv_and_maps_parsing() -> None:
    auxv = struct.pack("<QQQQQQ", 6, 4096, pointerguard.AT_RANDOM, 0x7FFFFFFFE123, 0, 0)
    assert pointerguard.at_random_address(auxv) == 0x7FFFFFFFE123
    assert pointerguard.at_random_address(struct.pack("<QQ", 0, 0)) is None
    maps = textwrap.dedent("""\
        555555554000-555555556000 r--p 00000000 00:1f 12 /usr/bin/python3
        555555556000-555555558000 r-xp 00002000 00:1f 12 /usr/bin/python3
        7ffff7fc0000-7ffff7fc4000 rw-p 00000000 00:00 0
        7ffff7fc4000-7ffff7fc8000 rw-s 00000000 00:01 7 /dev/shm/x
        7ffff7fc8000-7ffff7fc9000 ---p 00000000 00:00 0
        7ffff7fc9000-7ffff7fcb000 r--p 00000000 00:00 0 [vvar]
        7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]
        """)
    scan, code = pointerguard.mappings(maps)
    assert scan == [(0x555555554000, 0x555555556000), (0x7FFFF7FC0000, 0x7FFFF7FC4000), (0x7FFFFFFDE000, 0x7FFFFFFFF000)]
    assert code == [(0x555555556000, 0x555555558000), (0x7FFFFFFDE000, 0x7FFFFFFFF000)]  # setjmp buffers mangle stack pointers


def test_a_scan_finds_guard_copies_and_mangled_code_pointers_only() -> None:
    code = [(0x555555556000, 0x555555558000)]
    words = [7, GUARD, pointerguard.mangle(0x555555556100, GUARD), pointerguard.mangle(0x1000, GUARD),
             pointerguard.mangle(0x555555556100, GUARD ^ (1 << 40))]
    data = b"\0\0\0" + struct.pack("<5Q", *words)  # misaligned copies are not words: nothing found
    assert pointerguard.find_words(data, 0x10000, GUARD, code) == {}
    found = pointerguard.find_words(data[3:], 0x10000, GUARD, code)
    assert found == {0x10008: ("guard", GUARD), 0x10010: ("mangled", 0x555555556100)}


def test_a_scan_finds_aligned_canary_copies_only() -> None:
    canary = 0x1122334455667700
    data = struct.pack("<4Q", 7, canary, canary + 0x100, canary) + b"\0" + struct.pack("<Q", canary)
    assert pointerguard.find_canaries(data, 0x10000, canary) == {0x10008: ("canary", canary), 0x10018: ("canary", canary)}
    assert pointerguard.canary_value(0xFFFFFFFFFFFFFFFF) == 0xFFFFFFFFFFFFFF00


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 only")
def test_an_interpreter_with_its_canary_rekeyed_under_live_frames_returns_through_them() -> None:
    """The re-key runs under frames of the interpreter's C stack (the script's own call chain
    and a recursion through C calls); every one returns after it, past its canary check."""
    canary = 0x0F1E2D3C4B5A6900
    script = textwrap.dedent(f"""
        import sys
        from snapfaas.runtime import pointerguard

        def deep(n):
            if n == 0:
                return pointerguard.rekey({GUARD}, {canary})
            return sorted([1], key=lambda _: deep(n - 1))[0] and True
        sys.setrecursionlimit(10000)
        print(deep(50), flush=True)
        with open("/proc/self/auxv", "rb") as auxv:
            address = pointerguard.at_random_address(auxv.read())
        with open("/proc/self/mem", "rb") as mem:
            mem.seek(address)
            words = mem.read(16)
        print(int.from_bytes(words[:8], "little") == {canary}, int.from_bytes(words[8:], "little") == {GUARD}, flush=True)
        import json, subprocess
        print(json.dumps(subprocess.run(["true"]).returncode), flush=True)
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True", "True True", "0"]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 only")
def test_a_rekeyed_interpreter_keeps_working_and_runs_an_atexit_entry_registered_before() -> None:
    script = textwrap.dedent(f"""
        import ctypes, sys
        from snapfaas.runtime import pointerguard
        libc = ctypes.CDLL(None)
        message = ctypes.create_string_buffer(b"registered before the re-key")
        libc.__cxa_atexit(ctypes.cast(libc.puts, ctypes.c_void_p), message, None)
        print(pointerguard.rekey({GUARD}), pointerguard.rekey({GUARD}), flush=True)
        with open("/proc/self/auxv", "rb") as auxv:
            address = pointerguard.at_random_address(auxv.read())
        with open("/proc/self/mem", "rb") as mem:
            mem.seek(address + 8)
            print(int.from_bytes(mem.read(8), "little") == {GUARD}, flush=True)
        libc.exit(0)  # runs the C atexit list now, before the interpreter is finalized
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True True", "True", "registered before the re-key"]
