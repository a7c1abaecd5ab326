"""What restored copies share that they should not (snapfaas.snapshot.uniqueness.compare)."""

from __future__ import annotations

import pytest

from snapfaas.snapshot.uniqueness import compare


def fp(category: str, digest: str, kind: str = "value") -> dict[str, str]:
    return {"kind": kind, "category": category, "digest": digest}


def test_identical_state_in_every_copy_is_a_finding() -> None:
    restored = [{"random (global state)": fp("state", "aa", "random-state")}] * 3
    [finding] = compare(restored, [])
    assert (finding.name, finding.kind, finding.category) == ("random (global state)", "random-state", "state")
    assert "identical in all 3 restored copies" in finding.detail


def test_a_state_that_differs_in_one_copy_is_not() -> None:
    restored = [{"s": fp("state", "aa")}, {"s": fp("state", "aa")}, {"s": fp("state", "bb")}]
    assert compare(restored, []) == []


def test_a_value_is_a_finding_only_if_independent_inits_differ_on_it() -> None:
    restored = [{"app.TOKEN": fp("value", "t1", "uuid"), "app.LIMIT": fp("value", "10")}] * 3
    references = [{"app.TOKEN": fp("value", "r1", "uuid"), "app.LIMIT": fp("value", "10")},
                  {"app.TOKEN": fp("value", "r2", "uuid"), "app.LIMIT": fp("value", "10")}]
    [finding] = compare(restored, references)
    assert (finding.name, finding.kind) == ("app.TOKEN", "uuid")
    assert "captured at init" in finding.detail


def test_values_without_two_references_are_not_judged() -> None:
    restored = [{"app.TOKEN": fp("value", "t1")}] * 2
    assert compare(restored, [{"app.TOKEN": fp("value", "r1")}]) == []
    assert compare(restored, [{"app.TOKEN": fp("value", "r1")}, {}]) == []


def test_fingerprints_missing_from_a_copy_are_not_compared() -> None:
    assert compare([{"s": fp("state", "aa")}, {}], []) == []


def test_states_come_first_and_two_copies_are_needed() -> None:
    restored = [{"b": fp("value", "x"), "a": fp("state", "y")}] * 2
    references = [{"b": fp("value", "1")}, {"b": fp("value", "2")}]
    assert [f.name for f in compare(restored, references)] == ["a", "b"]
    with pytest.raises(ValueError):
        compare(restored[:1], references)
