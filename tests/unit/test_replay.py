"""Replay protection (snapfaas.api.replay.ReplayCache)."""

from __future__ import annotations

import datetime as dt

import pytest

from snapfaas.api.replay import ReplayCache
from snapfaas.errors import InvalidSignature

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        return self.now


def test_second_use_is_refused_until_the_signature_expires() -> None:
    clock = Clock()
    cache = ReplayCache(window_s=900, clock=clock)
    cache.admit("a" * 64, T0)
    cache.admit("b" * 64, T0)
    with pytest.raises(InvalidSignature, match="replayed"):
        cache.admit("a" * 64, T0)
    clock.now += 899
    with pytest.raises(InvalidSignature):
        cache.admit("a" * 64, T0)
    clock.now += 2  # the signature itself is now expired (the verifier refuses it): forgotten
    cache.admit("c" * 64, T0 + dt.timedelta(seconds=901))
    assert len(cache) == 1


def test_future_dated_signature_is_kept_for_its_whole_window() -> None:
    clock = Clock()
    cache = ReplayCache(window_s=900, clock=clock)
    cache.admit("f" * 64, T0 + dt.timedelta(seconds=600))  # client clock ahead
    clock.now += 1400
    with pytest.raises(InvalidSignature):
        cache.admit("f" * 64, T0 + dt.timedelta(seconds=600))


def test_memory_is_bounded() -> None:
    cache = ReplayCache(capacity=100, window_s=900, clock=Clock())
    for i in range(1000):
        cache.admit(f"{i:064d}", T0)
    assert len(cache) == 100
    with pytest.raises(InvalidSignature):
        cache.admit(f"{999:064d}", T0)  # the newest are kept
