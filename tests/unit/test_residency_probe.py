"""`view.ResidencyProbe` asks the page cache only about the windows a prefetch needs, and
`view.probe_windows` groups a working set's spans into few mincore calls."""

from __future__ import annotations

from pathlib import Path

from snapfaas.snapshot.view import PAGE, ResidencyProbe, probe_windows


def test_probe_windows_merge_close_spans_and_give_up_past_the_bound() -> None:
    assert probe_windows([(8192, 12288), (0, 4096)], gap=4096) == [(0, 12288)]
    assert probe_windows([(0, 4096), (1 << 20, (1 << 20) + 4096)], gap=4096) == [(0, 4096), (1 << 20, (1 << 20) + 4096)]
    assert probe_windows([(i << 20, (i << 20) + 1) for i in range(5)], gap=0, most=4) is None


def test_windowed_probe_reports_only_the_windows_pages(tmp_path: Path) -> None:
    path = tmp_path / "image"
    size = 10 * PAGE + 100  # a partial last page
    path.write_bytes(b"x" * size)  # just written: in the page cache
    probe = ResidencyProbe(path, size)
    try:
        assert all(b & 1 for b in probe.pages()) and len(probe.pages()) == 11
        part = probe.pages([(2 * PAGE + 5, 4 * PAGE), (size - 1, size)])
        assert len(part) == 11
        assert [i for i, b in enumerate(part) if b & 1] == [2, 3, 10]
        assert not any(b & 1 for b in probe.pages([]))
    finally:
        probe.close()
