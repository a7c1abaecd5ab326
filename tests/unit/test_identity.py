"""Temporary credentials of execution environments (snapfaas.identity)."""

from __future__ import annotations

import datetime as dt

from snapfaas.identity import REFRESH_MARGIN, EndpointCredentials, IdentityBroker
from snapfaas.principals import FunctionPrincipal

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)
PRINCIPAL = FunctionPrincipal("f", "arn:aws:iam::000000000000:role/r")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def test_credentials_carry_the_principal_and_need_the_session_token() -> None:
    broker = IdentityBroker(clock=Clock())
    token = broker.issue_token("env-1", PRINCIPAL)
    creds = broker.credentials(token)
    assert creds is not None and creds.access_key_id.startswith("ASIA")
    session = broker.session(creds.access_key_id, creds.session_token)
    assert session is not None
    assert (session.secret_access_key, session.principal) == (creds.secret_access_key, PRINCIPAL)
    assert broker.session(creds.access_key_id, None) is None
    assert broker.session(creds.access_key_id, creds.session_token + "x") is None
    assert broker.session(creds.access_key_id, creds.session_token[:-1]) is None
    assert broker.session("ASIAUNKNOWN", creds.session_token) is None
    assert broker.credentials(token + "x") is None
    assert broker.credentials("") is None


def test_tokens_are_not_stored_in_clear() -> None:
    broker = IdentityBroker(clock=Clock())
    token = broker.issue_token("env-1", PRINCIPAL)
    assert token not in broker._tokens  # keyed by SHA-256
    assert all(token.encode() not in key for key in broker._tokens)


def test_rotation_withdraws_the_previous_key() -> None:
    clock = Clock()
    broker = IdentityBroker(ttl=dt.timedelta(hours=1), clock=clock)
    token = broker.issue_token("env-1", PRINCIPAL)
    first = broker.credentials(token)
    assert first is not None
    clock.now = first.expiration - REFRESH_MARGIN - dt.timedelta(seconds=1)
    assert broker.credentials(token) == first  # not due yet
    clock.now = first.expiration - REFRESH_MARGIN
    second = broker.credentials(token)
    assert second is not None and second.access_key_id != first.access_key_id
    assert broker.session(first.access_key_id, first.session_token) is None  # rotated out at once
    assert broker.session(second.access_key_id, second.session_token) is not None
    assert len(broker._by_key) == 1


def test_expired_credentials_are_refused() -> None:
    clock = Clock()
    broker = IdentityBroker(ttl=dt.timedelta(minutes=30), clock=clock)
    creds = broker.credentials(broker.issue_token("env-1", PRINCIPAL))
    assert creds is not None
    clock.now = creds.expiration
    assert broker.session(creds.access_key_id, creds.session_token) is None


def test_revoke_environment_withdraws_its_tokens_and_keys_only() -> None:
    broker = IdentityBroker(clock=Clock())
    mine, other = broker.issue_token("env-1", PRINCIPAL), broker.issue_token("env-2", PRINCIPAL)
    creds, kept = broker.credentials(mine), broker.credentials(other)
    assert creds is not None and kept is not None
    broker.revoke_environment("env-1")
    assert broker.credentials(mine) is None
    assert broker.session(creds.access_key_id, creds.session_token) is None
    assert broker.session(kept.access_key_id, kept.session_token) is not None


def test_endpoint_credentials_environ_records_function_and_role() -> None:
    broker = IdentityBroker(clock=Clock())
    endpoint = EndpointCredentials(broker, "http://127.0.0.1:9/creds", "123456789012")
    environ = endpoint.environ("env-1", "fn", "arn:aws:iam::000000000000:role/x", snap_start=True)
    assert set(environ) == {"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN"}
    assert environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == "http://127.0.0.1:9/creds"
    creds = broker.credentials(environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"])
    assert creds is not None
    session = broker.session(creds.access_key_id, creds.session_token)
    assert session is not None
    assert session.principal == FunctionPrincipal("fn", "arn:aws:iam::000000000000:role/x", "123456789012")
    endpoint.revoke("env-1")
    assert broker.session(creds.access_key_id, creds.session_token) is None


def test_on_demand_environments_get_key_variables_until_revoked() -> None:
    clock = Clock()
    broker = IdentityBroker(clock=clock)
    endpoint = EndpointCredentials(broker, "http://127.0.0.1:9/creds", "123456789012")
    environ = endpoint.environ("env-2", "fn", "arn:aws:iam::000000000000:role/x")
    assert set(environ) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    session = broker.session(environ["AWS_ACCESS_KEY_ID"], environ["AWS_SESSION_TOKEN"])
    assert session is not None and session.secret_access_key == environ["AWS_SECRET_ACCESS_KEY"]
    assert session.principal == FunctionPrincipal("fn", "arn:aws:iam::000000000000:role/x", "123456789012")
    assert endpoint.expires("env-2") == (T0 + broker.ttl).timestamp()
    assert endpoint.expires("env-other") is None
    endpoint.revoke("env-2")
    assert broker.session(environ["AWS_ACCESS_KEY_ID"], environ["AWS_SESSION_TOKEN"]) is None


def test_retired_environment_keeps_issued_credentials_until_expiry() -> None:
    """A snapshot's init credentials: the token stops working, the key works until it expires."""
    clock = Clock()
    broker = IdentityBroker(clock=clock)
    endpoint = EndpointCredentials(broker, "http://127.0.0.1:9/creds")
    token = endpoint.environ("snapshot-1", "fn", "arn:aws:iam::000000000000:role/x", snap_start=True)["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    creds = broker.credentials(token)
    assert creds is not None
    endpoint.retire("snapshot-1")
    assert broker.credentials(token) is None
    assert broker.session(creds.access_key_id, creds.session_token) is not None
    clock.now = creds.expiration - dt.timedelta(seconds=1)
    assert broker.session(creds.access_key_id, creds.session_token) is not None
    clock.now = creds.expiration
    assert broker.session(creds.access_key_id, creds.session_token) is None
    other = broker.credentials(broker.issue_token("env-3", PRINCIPAL))  # issuing prunes expired keys
    assert other is not None and creds.access_key_id not in broker._by_key
