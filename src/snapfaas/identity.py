"""Temporary credentials for execution environments (the container-credentials endpoint).

Each environment gets an authorization token (`AWS_CONTAINER_AUTHORIZATION_TOKEN`); presenting
it to the credentials endpoint returns short-lived credentials (key id, secret, session token,
expiry) that this server's SigV4 verifier accepts until they expire. A SnapStart environment
gets a new token after every restore, so credentials are never shared through a snapshot.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import string
from collections.abc import Callable

ALPHABET = string.ascii_uppercase + string.digits
REFRESH_MARGIN = dt.timedelta(minutes=5)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class TemporaryCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: dt.datetime

    def to_json(self) -> dict[str, str]:
        """The container-credentials response shape botocore expects."""
        return {
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.session_token,
            "Expiration": self.expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


class IdentityBroker:
    def __init__(self, ttl: dt.timedelta = dt.timedelta(hours=1), clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.ttl = ttl
        self.clock = clock
        self._tokens: dict[str, str] = {}  # token -> environment id
        self._by_token: dict[str, TemporaryCredentials] = {}
        self._by_key: dict[str, TemporaryCredentials] = {}

    def issue_token(self, env_id: str) -> str:
        token = secrets.token_urlsafe(32)
        self._tokens[token] = env_id
        return token

    def revoke_environment(self, env_id: str) -> None:
        for token in [t for t, e in self._tokens.items() if e == env_id]:
            del self._tokens[token]
            creds = self._by_token.pop(token, None)
            if creds is not None:
                self._by_key.pop(creds.access_key_id, None)

    def credentials(self, token: str) -> TemporaryCredentials | None:
        """Current credentials for a valid token (rotated shortly before they expire)."""
        if token not in self._tokens:
            return None
        now = self.clock()
        current = self._by_token.get(token)
        if current is not None and current.expiration - now > REFRESH_MARGIN:
            return current
        fresh = TemporaryCredentials(
            "ASIA" + "".join(secrets.choice(ALPHABET) for _ in range(16)),
            secrets.token_urlsafe(30)[:40],
            secrets.token_urlsafe(48),
            (now + self.ttl).replace(microsecond=0),
        )
        self._by_token[token] = fresh
        self._by_key[fresh.access_key_id] = fresh
        return fresh

    def secret_for(self, access_key_id: str, session_token: str | None) -> str | None:
        """The secret of unexpired temporary credentials, if the session token matches."""
        creds = self._by_key.get(access_key_id)
        if creds is None or creds.session_token != session_token or creds.expiration <= self.clock():
            return None
        return creds.secret_access_key


class EndpointCredentials:
    """The credentials variables of one environment: the endpoint URI and a fresh token."""

    def __init__(self, broker: IdentityBroker, uri: str) -> None:
        self.broker = broker
        self.uri = uri

    def environ(self, identity: str) -> dict[str, str]:
        return {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": self.uri,
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": self.broker.issue_token(identity),
        }

    def revoke(self, identity: str) -> None:
        self.broker.revoke_environment(identity)
