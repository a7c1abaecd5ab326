"""The cluster key's signature over forwarded invokes (`snapfaas.cluster.signing`)."""

from __future__ import annotations

import hashlib

import pytest

from snapfaas.cluster import signing
from snapfaas.cluster.signing import ClusterSigner
from snapfaas.errors import InvalidSignature
from snapfaas.principals import FunctionPrincipal, Operator

KEY = bytes(range(32))
PATH = "/snapfaas/v1/cluster/functions/f/invocations?Qualifier=1"
BODY = b'{"x": 1}'


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def pair(clock: Clock | None = None) -> tuple[ClusterSigner, ClusterSigner]:
    clock = clock or Clock()
    return ClusterSigner(KEY, "a", clock), ClusterSigner(KEY, "b", clock)


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("principal", [Operator("AKIDOPERATOR"), None,
                                       FunctionPrincipal("caller", "arn:aws:iam::123456789012:role/x", "000000000000")])
def test_a_signed_request_verifies_with_its_principal(principal) -> None:  # type: ignore[no-untyped-def]
    a, b = pair()
    headers = a.sign("POST", PATH, BODY, principal, "req-1", "b")
    assertion = b.verify("POST", PATH, sha(BODY), headers)
    assert assertion.principal == principal and assertion.request_id == "req-1" and assertion.sender == "a"


@pytest.mark.parametrize("change", ["method", "path", "body", "principal", "request", "sender", "timestamp", "signature"])
def test_any_changed_part_is_refused(change: str) -> None:
    a, b = pair()
    headers = a.sign("POST", PATH, BODY, Operator("K"), "req-1", "b")
    method, path, body = "POST", PATH, BODY
    if change == "method":
        method = "PUT"
    elif change == "path":
        path = PATH.replace("f/", "g/")
    elif change == "body":
        body = b'{"x": 2}'
    elif change == "principal":
        headers[signing.PRINCIPAL] = signing.encode_principal(FunctionPrincipal("other", "arn:aws:iam::1:role/r"))
    elif change == "request":
        headers[signing.REQUEST_ID] = "req-2"
    elif change == "sender":
        headers[signing.SENDER] = "c"
    elif change == "timestamp":
        headers[signing.TIMESTAMP] = str(float(headers[signing.TIMESTAMP]) + 1)
    else:
        headers[signing.SIGNATURE] = "0" * 64
    with pytest.raises(InvalidSignature, match="step 'signature'"):
        b.verify(method, path, sha(body), headers)


def test_another_key_is_refused() -> None:
    clock = Clock()
    forger = ClusterSigner(b"\x01" * 32, "a", clock)
    b = ClusterSigner(KEY, "b", clock)
    with pytest.raises(InvalidSignature, match="step 'signature'"):
        b.verify("POST", PATH, sha(BODY), forger.sign("POST", PATH, BODY, Operator("K"), "r", "b"))


def test_a_request_signed_for_another_node_is_refused() -> None:
    clock = Clock()
    a, c = ClusterSigner(KEY, "a", clock), ClusterSigner(KEY, "c", clock)
    with pytest.raises(InvalidSignature, match="step 'target'"):
        c.verify("POST", PATH, sha(BODY), a.sign("POST", PATH, BODY, Operator("K"), "r", "b"))


def test_missing_headers_are_refused() -> None:
    _, b = pair()
    with pytest.raises(InvalidSignature, match="step 'headers'"):
        b.verify("POST", PATH, sha(BODY), {})


def test_a_replayed_request_is_refused() -> None:
    a, b = pair()
    headers = a.sign("POST", PATH, BODY, Operator("K"), "r", "b")
    b.verify("POST", PATH, sha(BODY), headers)
    with pytest.raises(InvalidSignature, match="replayed"):
        b.verify("POST", PATH, sha(BODY), headers)


def test_old_and_future_timestamps_are_refused() -> None:
    clock = Clock()
    a, b = pair(clock)
    headers = a.sign("POST", PATH, BODY, Operator("K"), "r", "b")
    clock.now += signing.WINDOW_S + 1
    with pytest.raises(InvalidSignature, match="step 'timestamp'"):
        b.verify("POST", PATH, sha(BODY), headers)
    clock.now -= 2 * (signing.WINDOW_S + 1)
    with pytest.raises(InvalidSignature, match="step 'timestamp'"):
        b.verify("POST", PATH, sha(BODY), headers)


@pytest.mark.parametrize("stamp", ["nan", "inf", "-inf", "soon"])
def test_non_finite_timestamps_are_refused(stamp: str) -> None:
    a, b = pair()
    headers = a.sign("POST", PATH, BODY, Operator("K"), "r", "b")
    headers[signing.TIMESTAMP] = stamp
    with pytest.raises(InvalidSignature, match="step 'timestamp'"):
        b.precheck(headers)


def test_garbage_principal_is_refused_even_when_signed() -> None:
    with pytest.raises(InvalidSignature, match="step 'principal'"):
        signing.decode_principal("!!!")
    with pytest.raises(InvalidSignature, match="step 'principal'"):
        signing.decode_principal(signing.base64.urlsafe_b64encode(b'{"kind": "root"}').decode())


def test_short_keys_are_rejected() -> None:
    with pytest.raises(ValueError):
        ClusterSigner(b"short", "a")
