"""The cluster key's signature over a forwarded invoke (no I/O).

A node that forwards an invoke has authenticated the caller already (SigV4); the target must
know the request comes from a live node of the cluster and who the caller was. The forwarder
signs, with HMAC-SHA256 under the cluster key (shared by every node through the database's
``cluster_secrets`` table), the string

    method \\n path?query \\n sha256(body) \\n timestamp \\n principal \\n request id \\n sender \\n target

and sends the parts in ``X-Snapfaas-*`` headers. The target accepts a request only if the
signature matches, the timestamp is within `WINDOW_S` of its clock, the target is itself, and
the signature was not seen before (`ReplayCache`); the caller then checks that the sender is a
live node. Anything else is `InvalidSignature` (HTTP 403).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping

from snapfaas.api.replay import ReplayCache
from snapfaas.errors import InvalidSignature
from snapfaas.principals import FunctionPrincipal, Operator, Principal

WINDOW_S = 30.0
SIGNATURE = "X-Snapfaas-Cluster-Signature"
TIMESTAMP = "X-Snapfaas-Cluster-Timestamp"
PRINCIPAL = "X-Snapfaas-Cluster-Principal"
REQUEST_ID = "X-Snapfaas-Cluster-Request-Id"
SENDER = "X-Snapfaas-Cluster-Sender"
TARGET = "X-Snapfaas-Cluster-Target"
HEADERS = (SIGNATURE, TIMESTAMP, PRINCIPAL, REQUEST_ID, SENDER, TARGET)


def encode_principal(principal: Principal | None) -> str:
    """A principal as one header value (base64url of JSON); None (``--no-auth``) as ``anonymous``."""
    if principal is None:
        data: dict[str, str] = {"kind": "anonymous"}
    elif isinstance(principal, Operator):
        data = {"kind": "operator", "key": principal.access_key_id}
    else:
        data = {"kind": "function", "function": principal.function, "role": principal.role, "account": principal.account}
    return base64.urlsafe_b64encode(json.dumps(data, sort_keys=True).encode()).decode()


def decode_principal(value: str) -> Principal | None:
    """The principal `encode_principal` made; `InvalidSignature` for anything else."""
    try:
        data = json.loads(base64.urlsafe_b64decode(value.encode()))
        kind = data["kind"]
        if kind == "anonymous":
            return None
        if kind == "operator":
            return Operator(str(data["key"]))
        if kind == "function":
            return FunctionPrincipal(str(data["function"]), str(data["role"]), str(data["account"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidSignature(f"forwarded request refused at step 'principal': unreadable principal ({exc})") from exc
    raise InvalidSignature(f"forwarded request refused at step 'principal': unknown principal kind {kind!r}")


@dataclasses.dataclass(frozen=True)
class Assertion:
    """What a verified forwarded request asserts."""

    principal: Principal | None
    request_id: str
    sender: str


def _string_to_sign(method: str, path_qs: str, body_sha256: str, timestamp: str, principal: str, request_id: str,
                    sender: str, target: str) -> bytes:
    return "\n".join((method.upper(), path_qs, body_sha256, timestamp, principal, request_id, sender, target)).encode()


class ClusterSigner:
    """Signs forwarded requests and verifies them, under one cluster key."""

    def __init__(self, key: bytes, node_id: str, clock: Callable[[], float] = time.time,
                 replay: ReplayCache | None = None, window_s: float = WINDOW_S) -> None:
        if len(key) < 32:
            raise ValueError("the cluster key must have at least 32 bytes")
        self._key = key
        self.node_id = node_id
        self.clock = clock
        self.window_s = window_s
        self.replay = replay if replay is not None else ReplayCache(window_s=window_s, clock=clock)

    def _mac(self, message: bytes) -> str:
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, method: str, path_qs: str, body: bytes, principal: Principal | None, request_id: str,
             target: str) -> dict[str, str]:
        """The headers that make `target` accept this request from this node."""
        timestamp = f"{self.clock():.3f}"
        encoded = encode_principal(principal)
        digest = hashlib.sha256(body).hexdigest()
        signature = self._mac(_string_to_sign(method, path_qs, digest, timestamp, encoded, request_id, self.node_id, target))
        return {SIGNATURE: signature, TIMESTAMP: timestamp, PRINCIPAL: encoded, REQUEST_ID: request_id,
                SENDER: self.node_id, TARGET: target}

    def precheck(self, headers: Mapping[str, str]) -> None:
        """What can be checked before the body is read: every header present, signed for this
        node, within the window. `InvalidSignature` naming the failed step otherwise."""
        missing = [h for h in HEADERS if not headers.get(h)]
        if missing:
            raise InvalidSignature(f"forwarded request refused at step 'headers': missing {', '.join(missing)}")
        parts = {h: headers[h] for h in HEADERS}
        if parts[TARGET] != self.node_id:
            raise InvalidSignature(f"forwarded request refused at step 'target': signed for node {parts[TARGET]!r}, "
                                   f"this is {self.node_id!r}")
        try:
            signed_at = float(parts[TIMESTAMP])
        except ValueError as exc:
            raise InvalidSignature("forwarded request refused at step 'timestamp': not a number") from exc
        if not abs(self.clock() - signed_at) <= self.window_s:  # NaN and infinities fail too
            raise InvalidSignature(f"forwarded request refused at step 'timestamp': signed {self.clock() - signed_at:.1f} s "
                                   f"from this node's clock (window {self.window_s:.0f} s)")

    def verify(self, method: str, path_qs: str, body_sha256: str, headers: Mapping[str, str]) -> Assertion:
        """The assertion of a request signed for this node; `InvalidSignature` (403) naming the
        failed step otherwise. Records the signature: a second use is refused."""
        self.precheck(headers)
        parts = {h: headers[h] for h in HEADERS}
        signed_at = float(parts[TIMESTAMP])
        expected = self._mac(_string_to_sign(method, path_qs, body_sha256, parts[TIMESTAMP], parts[PRINCIPAL],
                                             parts[REQUEST_ID], parts[SENDER], parts[TARGET]))
        if not hmac.compare_digest(expected, parts[SIGNATURE]):
            raise InvalidSignature("forwarded request refused at step 'signature': the cluster signature does not match")
        self.replay.admit(parts[SIGNATURE], dt.datetime.fromtimestamp(signed_at, dt.timezone.utc))
        return Assertion(decode_principal(parts[PRINCIPAL]), parts[REQUEST_ID], parts[SENDER])
