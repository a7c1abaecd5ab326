"""GetFunction's ``Code.Location``: a time-limited link to the deployment package.

Lambda hands out a presigned S3 URL; this is the same idea served by the daemon itself. The
link carries its expiry and an HMAC over ``digest:expiry`` made with a per-process key, so it
works without SigV4 headers (curl, a browser) and stops working after `LINK_TTL_S` or a
server restart.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from snapfaas.errors import InvalidSignature

LINK_TTL_S = 600
PATH_PREFIX = "/snapfaas/v1/code/"


class CodeLinks:
    def __init__(self, key: bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        self.key = key or secrets.token_bytes(32)
        self.clock = clock

    def _signature(self, digest: str, expires: int) -> str:
        return hmac.new(self.key, f"{digest}:{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, base: str, digest: str) -> str:
        """A link to the package `digest` under `base` (scheme://host:port), valid for LINK_TTL_S."""
        expires = int(self.clock()) + LINK_TTL_S
        return f"{base}{PATH_PREFIX}{digest}?Expires={expires}&Signature={self._signature(digest, expires)}"

    def check(self, digest: str, expires: str, signature: str) -> None:
        """Raise `InvalidSignature` unless the link is one we made and it has not expired."""
        if not expires.isdigit() or not hmac.compare_digest(self._signature(digest, int(expires)), signature):
            raise InvalidSignature("The code link signature is invalid; call GetFunction for a fresh Code.Location.")
        if int(expires) < self.clock():
            raise InvalidSignature("The code link has expired; call GetFunction for a fresh Code.Location.")
