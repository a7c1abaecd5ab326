"""Dashboard sign-in: the operator's access key pair in a form, then a session cookie.

A session is a random 256-bit token kept in the server's memory (never on disk) with an expiry;
the cookie is HttpOnly, SameSite=Strict and Secure when the server speaks TLS. A server restart
signs everyone out. The key pair is checked in constant time against the operator's keys (the
same ones SigV4 accepts); a function's temporary credentials never sign in. Failed sign-ins
are counted per client address and refused for a while past `MAX_FAILURES` (a guessing brake).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Mapping

COOKIE = "snapfaas_session"
SESSION_S = 12 * 3600.0
MAX_FAILURES = 10  # per client address within FAILURE_WINDOW_S
FAILURE_WINDOW_S = 300.0


class Sessions:
    def __init__(self, keys: Mapping[str, str], clock: Callable[[], float] = time.monotonic) -> None:
        self.keys = dict(keys)
        self.clock = clock
        self._live: dict[str, float] = {}  # token -> expiry
        self._failures: dict[str, list[float]] = {}  # client address -> failure times

    def sign_in(self, access_key_id: str, secret: str, client: str) -> str | None:
        """A new session token for the operator's key pair; None for anything else (or when
        `client` failed too often lately)."""
        now = self.clock()
        recent = [t for t in self._failures.get(client, []) if now - t < FAILURE_WINDOW_S]
        if len(recent) >= MAX_FAILURES:
            self._failures[client] = recent
            return None
        expected = self.keys.get(access_key_id)
        # compare even for an unknown key id, so timing tells nothing about which ids exist
        valid = hmac.compare_digest((expected or "\0" * 40).encode(), secret.encode()) and expected is not None
        if not valid:
            self._failures[client] = [*recent, now]
            return None
        self._failures.pop(client, None)
        self._prune(now)
        token = secrets.token_urlsafe(32)
        self._live[token] = now + SESSION_S
        return token

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        expiry = self._live.get(token)
        if expiry is None:
            return False
        if expiry <= self.clock():
            del self._live[token]
            return False
        return True

    def sign_out(self, token: str | None) -> None:
        if token:
            self._live.pop(token, None)

    def _prune(self, now: float) -> None:
        for token in [t for t, expiry in self._live.items() if expiry <= now]:
            del self._live[token]
