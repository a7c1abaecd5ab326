"""Host id slices (snapfaas.sandbox.ids): range arithmetic, subuid overlap, the start check."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapfaas.sandbox.ids import (
    DEFAULT_BASE, DEFAULT_SLICES, ID_LIMIT, SLICE_SIZE, IdRange, IdRangeConflict, SubidEntry, check_host, overlaps,
    parse_subids, slice_has_processes, uids_of_status,
)


def entry(start: int, count: int, user: str = "alice") -> SubidEntry:
    return SubidEntry("/etc/subuid", 1, user, start, count)


def test_default_range_fits_below_2_31_and_above_debian_subids() -> None:
    ids = IdRange()
    assert (ids.base, ids.slices) == (DEFAULT_BASE, DEFAULT_SLICES) == (0x70000000, 4095)
    assert ids.end < ID_LIMIT
    # Debian's useradd: SUB_UID_MIN 100000 .. SUB_UID_MAX 600100000, 65536 per user
    every_useradd_slot = [entry(start, 65536) for start in range(100000, 600100000 - 65536 + 1, 65536)]
    assert len(every_useradd_slot) > 9000
    assert not overlaps(ids, every_useradd_slot)


def test_slices_are_disjoint_and_map_container_ids() -> None:
    ids = IdRange(1 << 20, 3)
    assert [ids.slice_base(i) for i in range(3)] == [1 << 20, (1 << 20) + SLICE_SIZE, (1 << 20) + 2 * SLICE_SIZE]
    assert ids.host_id(1, 1000) == (1 << 20) + SLICE_SIZE + 1000
    assert ids.host_id(2, SLICE_SIZE - 1) == ids.end - 1
    for bad in (-1, 3):
        with pytest.raises(ValueError, match="outside"):
            ids.slice_base(bad)
    with pytest.raises(ValueError, match="container id"):
        ids.host_id(0, SLICE_SIZE)


@pytest.mark.parametrize(("base", "slices", "match"), [
    (0, 1, "at least 65536"),
    (65535, 1, "at least 65536"),
    (1 << 20, 0, "at least 1"),
    (ID_LIMIT - SLICE_SIZE, 1, "below 2\\*\\*31"),
    (DEFAULT_BASE, DEFAULT_SLICES + 1, "below 2\\*\\*31"),
])
def test_range_that_does_not_fit_is_refused(base: int, slices: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        IdRange(base, slices)


def test_range_must_end_below_2_31() -> None:
    assert IdRange(ID_LIMIT - 2 * SLICE_SIZE - 1, 2).end == ID_LIMIT - 1
    with pytest.raises(ValueError, match="below 2\\*\\*31"):
        IdRange(ID_LIMIT - 2 * SLICE_SIZE, 2)


def test_parse_subids_skips_comments_blank_and_malformed_lines() -> None:
    text = "# comment\n\nalice:100000:65536\nbob:x:5\n1001:165536:65536\nbroken line\ncarol:1:2:3\n"
    entries = parse_subids(text, "/etc/subuid")
    assert entries == [SubidEntry("/etc/subuid", 3, "alice", 100000, 65536), SubidEntry("/etc/subuid", 5, "1001", 165536, 65536)]


@pytest.mark.parametrize(("start", "count", "clash"), [
    (1000, 1000, False),                    # far below
    (1000, 1000 + (1 << 20) - 2000, False),  # ends right below the base
    (1000, (1 << 20) - 1000 + 1, True),     # last id is the base
    ((1 << 20) + 5, 1, True),               # inside
    ((1 << 20) + 3 * SLICE_SIZE - 1, 10, True),  # starts at the last id
    ((1 << 20) + 3 * SLICE_SIZE, 10, False),     # starts right after
    (0, 1 << 31, True),                     # covers all of it
    ((1 << 20) + 5, 0, False),              # an empty entry owns nothing
])
def test_overlap(start: int, count: int, clash: bool) -> None:
    ids = IdRange(1 << 20, 3)
    assert bool(overlaps(ids, [entry(start, count)])) is clash


def test_check_host_refuses_an_overlap_naming_file_user_and_range(tmp_path: Path) -> None:
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text("alice:100000:65536\n")
    subgid.write_text(f"alice:100000:65536\nmallory:{DEFAULT_BASE + 5 * SLICE_SIZE}:65536\n")
    with pytest.raises(IdRangeConflict) as info:
        check_host(IdRange(), subuid, subgid)
    message = info.value.message
    assert str(subgid) in message and "line 2" in message and "'mallory'" in message
    assert f"{DEFAULT_BASE + 5 * SLICE_SIZE}-{DEFAULT_BASE + 6 * SLICE_SIZE - 1}" in message
    assert IdRange().describe() in message
    assert "alice" not in message


def test_check_host_accepts_missing_files_and_disjoint_entries(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\n")
    check_host(IdRange(), subuid, tmp_path / "absent")


def test_check_host_refuses_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(IdRangeConflict, match="cannot read"):
        check_host(IdRange(), tmp_path, tmp_path / "absent")  # a directory: read fails


def test_uids_of_status() -> None:
    assert uids_of_status("Name:\tx\nUid:\t1\t2\t3\t4\nGid:\t0\t0\t0\t0\n") == (1, 2, 3, 4)
    assert uids_of_status("Name:\tx\n") == ()


def test_slice_has_processes_reads_the_process_table(tmp_path: Path) -> None:
    ids = IdRange(1 << 20, 3)
    (tmp_path / "self").mkdir()
    (tmp_path / "12").mkdir()
    (tmp_path / "12" / "status").write_text(f"Uid:\t0\t{ids.host_id(1, 1000)}\t0\t0\n")
    (tmp_path / "13").mkdir()  # exited meanwhile: no status
    assert slice_has_processes(ids, 1, tmp_path)
    assert not slice_has_processes(ids, 0, tmp_path)
    assert not slice_has_processes(ids, 2, tmp_path)
