"""ResidentPrograms: the restore engine's files stay mapped, locked and looked up."""

import os
from pathlib import Path

from snapfaas.snapshot.resident import ResidentPrograms, shared_libraries


def _locked_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    raise AssertionError("no VmLck line in /proc/self/status")


def test_holds_files_and_pins_the_path_given(tmp_path: Path) -> None:
    program = tmp_path / "real" / "engine"
    program.parent.mkdir()
    program.write_bytes(b"\x7fELF" + b"x" * (256 << 10))
    (tmp_path / "link").symlink_to("real", target_is_directory=True)
    resident = ResidentPrograms()
    before = _locked_kib()
    try:
        failed = resident.hold([str(tmp_path / "link" / "engine"), str(tmp_path / "absent")])
        assert failed == [f"{tmp_path / 'absent'}: No such file or directory"]
        assert resident.locked_paths == {str(program)}  # the file, symlinks resolved
        assert resident.bytes == program.stat().st_size
        assert _locked_kib() - before >= 256
        assert str(tmp_path / "link") in resident._pinned  # the symlink's own dentry
        assert resident.hold([str(program)]) == []  # already held: not mapped twice
        assert len(resident.files) == 1
    finally:
        resident.release()
    assert resident.files == [] and _locked_kib() == before


def test_program_summary_names_what_was_held() -> None:
    python = os.path.realpath("/proc/self/exe")
    resident = ResidentPrograms()
    try:
        summary = resident.hold_program(python)
        assert f"{python} and its libraries kept resident" in summary
        assert python in resident.paths
        assert len(resident.files) == 1 + len({os.path.realpath(p) for p in shared_libraries(python)}) + (
            1 if shared_libraries(python) else 0)
    finally:
        resident.release()


def test_shared_libraries_of_a_non_program_is_empty(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a program\n")
    assert shared_libraries(str(text)) == []
