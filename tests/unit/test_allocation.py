"""The allocation barrier (runtime/allocation.py): parsing the allocator's statistics, filler
sizes, and real barriers after which a size class's next block is in the same place of a
fresh pool whatever holes the pools had before."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from snapfaas.runtime import allocation

STATS = """Small block threshold = 512, in 32 size classes.

class   size   num pools   blocks in use  avail blocks
-----   ----   ---------   -------------  ------------
    0     16           1              22           999
    1     32           2             445            65
   31    512           1              13            18

# arenas allocated total           =                    2
"""


def test_free_blocks_come_from_the_size_class_table() -> None:
    assert allocation.free_blocks(STATS) == {0: 999, 1: 65, 31: 18}
    assert allocation.free_blocks("no table here") is None
    assert allocation.free_blocks(STATS.replace("    1     32", "    1     48")) is None  # not 16-byte steps


def test_fillers_have_the_block_size_of_their_class() -> None:
    for size_class in range(allocation.CLASSES):
        template, operand, kind = allocation.fillers(size_class)
        item = template() if kind == 0 else template + operand if kind == 1 else bytes(operand)
        assert (sys.getsizeof(item) - 1) // allocation.ALIGNMENT == size_class


def test_after_a_barrier_where_a_class_allocates_does_not_depend_on_the_holes_before() -> None:
    """Two interpreters whose 400-byte blocks have different holes (as a version's code would
    leave): after the barrier, the next 400-byte object starts at the same place of a fresh
    pool (its first blocks) in both."""
    script = textwrap.dedent("""
        import sys
        from snapfaas.runtime import allocation
        junk = [bytes(367) for _ in range(1000)]  # 400-byte blocks
        del junk[::int(sys.argv[1])]  # holes in their pools
        done = allocation.barrier()
        first = bytes(367)
        print(done is not None and done.count > 0, id(first) % 16384)
        """)
    places = [subprocess.run([sys.executable, "-c", script, step], capture_output=True, text=True, timeout=60,
                             check=True).stdout.split() for step in ("3", "7")]
    assert places[0] == places[1] and places[0][0] == "True"
    assert int(places[0][1]) < 48 + 4 * 400  # one of the first blocks after the pool's 48-byte header
