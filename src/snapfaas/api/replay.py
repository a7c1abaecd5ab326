"""Optional replay protection (``snapfaas serve --replay-cache``).

A SigV4 signature stays valid for `MAX_SKEW_S` around its ``X-Amz-Date``, so a captured
request can be sent again within that window. The cache remembers every accepted signature
until its window has passed and refuses a second use. Memory is bounded: entries expire with
their window, and beyond `capacity` the oldest entries are dropped (only requests that passed
signature verification are recorded, so only key holders can fill it).

A client repeating an identical request within the same second (same date, same bytes) makes
the same signature and is refused too: that is the price of the option, which is off by
default. botocore's retries re-sign, and its requests differ by date within a second at most.
"""

from __future__ import annotations

import collections
import datetime as dt
import time
from collections.abc import Callable

from snapfaas.api.auth import MAX_SKEW_S
from snapfaas.errors import InvalidSignature

DEFAULT_CAPACITY = 100_000


class ReplayCache:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, window_s: float = MAX_SKEW_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.capacity = capacity
        self.window_s = window_s
        self.clock = clock
        self._expiry: collections.OrderedDict[str, float] = collections.OrderedDict()  # signature -> expiry (epoch s)

    def __len__(self) -> int:
        return len(self._expiry)

    def admit(self, signature: str, signed_at: dt.datetime) -> None:
        """Record a verified signature; raise `InvalidSignature` if it was seen before."""
        now = self.clock()
        self._expire(now)
        if signature in self._expiry:
            raise InvalidSignature("Signature already used: this request was replayed. Sign every request anew.")
        while len(self._expiry) >= self.capacity:
            self._expiry.popitem(last=False)
        self._expiry[signature] = max(signed_at.timestamp(), now) + self.window_s

    def _expire(self, now: float) -> None:
        """Drop expired entries from the oldest end (insertion order ~ expiry order, since every
        admitted date is within the window of the clock)."""
        while self._expiry:
            signature, expiry = next(iter(self._expiry.items()))
            if expiry > now:
                break
            del self._expiry[signature]
