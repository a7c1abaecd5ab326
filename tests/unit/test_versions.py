"""The dict version counter realignment (runtime/versions.py): which mappings are searched,
and a real realignment in a child interpreter, after which dicts keep working and new tags
start at the next multiple."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from snapfaas.runtime import versions


def test_only_private_writable_file_mappings_are_searched() -> None:
    maps = textwrap.dedent("""\
        555555554000-555555556000 r--p 00000000 00:1f 12 /usr/bin/python3
        7ffff7e00000-7ffff7e10000 rw-p 00010000 00:1f 13 /usr/lib/libpython3.11.so.1.0
        7ffff7e10000-7ffff7e20000 rw-p 00000000 00:00 0
        7ffff7e20000-7ffff7e30000 rw-s 00000000 00:01 7 /dev/shm/x
        7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]
        """)
    assert versions.writable_file_mappings(maps) == [(0x7FFFF7E00000, 0x7FFFF7E10000)]


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the dict layout and counter of CPython 3.11")
def test_after_realigning_new_dict_tags_start_at_the_next_multiple() -> None:
    script = textwrap.dedent("""
        import ctypes, json
        from snapfaas.runtime import versions
        print(versions.realign(1 << 24))
        d = {}
        d["k"] = 1
        tag = ctypes.c_uint64.from_address(id(d) + 24).value
        print(tag - (1 << 24) in range(0, 100), json.loads(json.dumps(d)) == d)
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True"]
