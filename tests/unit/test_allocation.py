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


POOLS_AND_FREE_LISTS = """# arenas allocated current         =                    2
54 unused pools * 16384 bytes      =              884,736
           11 free PyDictObjects * 48 bytes each =                  528
           3 free PyFloatObjects * 24 bytes each =                   72
            0 free PyListObjects * 40 bytes each =                    0
   4 free 1-sized PyTupleObjects * 32 bytes each =                  128
   8 free 2-sized PyTupleObjects * 40 bytes each =                  320
 1 free 20-sized PyTupleObjects * 184 bytes each =                  184
"""


def test_unused_pools_and_free_lists_come_from_the_statistics() -> None:
    assert allocation.unused_pools(POOLS_AND_FREE_LISTS) == (54, 16384)
    assert allocation.unused_pools("no pools here") is None
    per_pool = (16384 - allocation.POOL_OVERHEAD) // 512
    assert allocation.pool_fill((54, 16384)) == (54 * per_pool, allocation.MAX_POOLS * per_pool)
    assert allocation.pool_fill((0, 16384))[1] == allocation.MAX_POOLS * per_pool  # the list is made whatever the count
    assert allocation.pool_fill((allocation.MAX_POOLS + 1, 16384)) == (0, 0)
    assert allocation.pool_fill((4, 4096)) == (0, 0)  # a pool size this does not know
    # empty lists left out, and tuples of a length CPython does not keep (20)
    assert allocation.free_objects(POOLS_AND_FREE_LISTS) == {("dict", 0): 11, ("float", 0): 3, ("tuple", 1): 4,
                                                             ("tuple", 2): 8}


def test_after_a_barrier_the_next_pool_does_not_depend_on_the_pools_used_before() -> None:
    """Two interpreters that used different numbers of pools before (as a version's code that
    took a pool more would): after the barrier, the next object is at the same address (a new
    arena's first pool; ASLR off as in a deterministic init), and the interpreter's free lists
    were drained."""
    script = textwrap.dedent("""
        import sys
        from snapfaas.runtime import allocation
        junk = [bytes(367) for _ in range(40 * int(sys.argv[1]))]  # whole pools of 400-byte blocks
        spare = [{} for _ in range(int(sys.argv[1]))]
        del spare  # onto the dict free list
        done = allocation.barrier()
        first = bytes(367)
        print(done is not None and done.pools > 0 and len(done.drained) > 0, hex(id(first)))
        """)
    places = [subprocess.run(["setarch", "--addr-no-randomize", sys.executable, "-c", script, pools],
                             capture_output=True, text=True, timeout=60, check=True).stdout.split()
              for pools in ("0", "3")]
    assert places[0] == places[1] and places[0][0] == "True"
