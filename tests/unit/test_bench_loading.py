"""The restore loading benchmark's pure helpers: ratios over the eager baseline and the table."""

from __future__ import annotations

from snapfaas.bench import loading


def _cell(median: float) -> dict[str, float]:
    return {"median": median, "min": median - 1, "max": median + 1, "n": 3}


def _result() -> dict:
    restore = {name: {tier: _cell(base * (i + 1)) for i, tier in enumerate(loading.TIERS)}
               for name, base in (("eager", 100.0), ("lazy", 150.0), ("prefetch", 50.0))}
    return {"timestamp": "T", "runs": 3, "functions": {"torch": {
        "chunks": 324, "restore_e2e_ms": restore, "ratios_over_eager": loading.ratios(restore),
        "chunks_fetched": {"eager": {"median": 324, "min": 324, "max": 324}, "lazy": {"median": 160, "min": 150, "max": 170},
                           "prefetch": {"median": 170, "min": 160, "max": 180}}}}}


def test_ratios_are_each_loading_over_eager_for_the_same_tier() -> None:
    ratios = _result()["functions"]["torch"]["ratios_over_eager"]
    assert set(ratios) == {"lazy", "prefetch"}
    assert ratios["lazy"] == {tier: 1.5 for tier in loading.TIERS}
    assert ratios["prefetch"] == {tier: 0.5 for tier in loading.TIERS}


def test_markdown_has_a_row_per_function_and_loading_with_every_tier() -> None:
    table = loading.markdown(_result())
    rows = [line for line in table.splitlines() if line.startswith("| torch |")]
    assert [row.split(" | ")[1] for row in rows] == ["eager", "lazy", "lazy + prefetch"]
    assert all(row.count(" | ") == len(loading.TIERS) + 2 for row in rows)
    assert "**0.5x**" in rows[2] and "170 of 324" in rows[2]
    assert "**" not in rows[0]  # the baseline has no ratio


def test_report_fields_are_read_by_exact_name() -> None:
    """A REPORT line's billed fields never stand in for the measured ones."""
    from snapfaas.bench.harness import TimedInvoke

    report = ("REPORT RequestId: 8f5e\tDuration: 7.73 ms\tBilled Duration: 10 ms\tMemory Size: 512 MB\t"
              "Max Memory Used: 8 MB\tRestore Duration: 47.27 ms\tBilled Restore Duration: 2 ms\t")
    invoke = TimedInvoke(100.0, report, report, None)
    assert invoke.fields["Restore Duration"] == "47.27 ms" and invoke.fields["Billed Restore Duration"] == "2 ms"
    assert invoke.durations() == {"Restore Duration": 47.27, "Duration": 7.73}
    cold = TimedInvoke(100.0, "REPORT RequestId: x\tDuration: 1.50 ms\tBilled Duration: 1071 ms\tInit Duration: 1069.62 ms\t",
                       "", None)
    assert cold.durations() == {"Init Duration": 1069.62, "Duration": 1.5}


def test_markdown_of_a_run_of_some_tiers_has_only_their_columns() -> None:
    result = _result()
    chosen = ("memory", "memory_cold")
    result["tiers"] = {tier: loading.TIER_LABELS[tier] for tier in chosen}
    for figures in result["functions"]["torch"]["restore_e2e_ms"].values():
        for tier in set(loading.TIERS) - set(chosen):
            del figures[tier]
    result["functions"]["torch"]["chunks_fetched"] = {name: {"median": 0, "min": 0, "max": 0}
                                                      for name in ("eager", "lazy", "prefetch")}
    table = loading.markdown(result)
    assert loading.TIER_LABELS["origin"] not in table
    rows = [line for line in table.splitlines() if line.startswith("| torch |")]
    assert all(row.count(" | ") == len(chosen) + 2 and row.endswith("| – |") for row in rows)


def test_a_run_refuses_an_unknown_tier() -> None:
    import pytest

    with pytest.raises(ValueError, match="unknown tier"):
        loading.run(lambda _: None, "/nonexistent", tiers=["memory", "ram"])
