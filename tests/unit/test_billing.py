"""REPORT billing fields as Lambda computes them (snapfaas.worker.billing)."""

from __future__ import annotations

from snapfaas.worker.billing import Phase, billed_duration_ms, phase_fields, report_fields


def test_warm_invocation_rounds_up_to_the_millisecond() -> None:
    assert billed_duration_ms(12.01, None) == 13
    assert billed_duration_ms(0.2, None) == 1
    assert billed_duration_ms(5.0, None) == 5


def test_on_demand_cold_start_bills_init() -> None:
    """AWS REPORT samples (init billed): 1049.63 ms + Init 1293.83 ms -> 2344 ms; 1058.15 + 1307.68 -> 2366."""
    assert billed_duration_ms(1049.63, Phase("Init", 1293.83)) == 2344
    assert billed_duration_ms(1058.15, Phase("Init", 1307.68)) == 2366
    assert report_fields(1058.15, Phase("Init", 1307.68)) == ["Duration: 1058.15 ms", "Billed Duration: 2366 ms"]
    assert phase_fields(Phase("Init", 1307.68)) == ["Init Duration: 1307.68 ms"]


def test_snapstart_bills_only_the_runtime_part_of_the_restore() -> None:
    """AWS REPORT samples: Duration 127.10 ms, Billed Restore 26 ms -> Billed Duration 154 ms (and
    306.34 + 303 -> 610, 2338.66 + 182 -> 2521)."""
    restore = Phase("Restore", 325.93, 25.4)
    assert billed_duration_ms(127.10, restore) == 154
    assert phase_fields(restore) == ["Restore Duration: 325.93 ms", "Billed Restore Duration: 26 ms"]
    assert billed_duration_ms(306.34, Phase("Restore", 511.25, 302.2)) == 610
    assert billed_duration_ms(2338.66, Phase("Restore", 398.97, 181.5)) == 2521
    assert phase_fields(Phase("Restore", 40.0, 0.0)) == ["Restore Duration: 40.00 ms", "Billed Restore Duration: 1 ms"]
    assert phase_fields(None) == []
