"""Temporary credentials for execution environments, delivered as Lambda delivers them.

Credentials are short-lived (key id, secret, session token, expiry); this server's SigV4
verifier accepts them until they expire, as the function's principal (`FunctionPrincipal`:
denied everything but granted invokes, see `snapfaas.policy`). How an environment gets them
depends on its initialization type, as on Lambda:

- on-demand: the key variables ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
  ``AWS_SESSION_TOKEN``, fixed for the environment's life (the worker retires the environment
  before they expire: `EndpointCredentials.expires`);
- SnapStart (the publish's init and every restored environment): the container-credentials
  endpoint, ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` + an authorization token
  (``AWS_CONTAINER_AUTHORIZATION_TOKEN``) that returns current credentials. A restored
  environment gets a new token, so it fetches fresh credentials; the credentials init fetched
  (cached in the snapshot, e.g. by a module-level boto3 client) stay valid until their expiry
  (`IdentityBroker.retire_environment` withdraws only the token), after which SDKs refresh them
  from the endpoint with the restored environment's token.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import secrets
import string
from collections.abc import Callable

from snapfaas.principals import FunctionPrincipal

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


@dataclasses.dataclass(frozen=True)
class TemporarySession:
    """What the SigV4 verifier needs for temporary credentials: the secret and who holds it."""

    secret_access_key: str
    principal: FunctionPrincipal


@dataclasses.dataclass(frozen=True)
class _Grant:
    env_id: str
    principal: FunctionPrincipal


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class IdentityBroker:
    """Tokens and temporary credentials of execution environments.

    Secrets are never compared with ``==``: authorization tokens are stored and looked up by
    their SHA-256 (a lookup reveals nothing usable about a token), session tokens are compared
    with `hmac.compare_digest`. Each token has at most one set of live credentials: rotating
    them withdraws the previous key at once.
    """

    def __init__(self, ttl: dt.timedelta = dt.timedelta(hours=1), clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.ttl = ttl
        self.clock = clock
        self._tokens: dict[bytes, _Grant] = {}  # sha256(token) -> environment and principal
        self._by_token: dict[bytes, TemporaryCredentials] = {}
        self._by_key: dict[str, tuple[TemporaryCredentials, FunctionPrincipal]] = {}

    def issue_token(self, env_id: str, principal: FunctionPrincipal) -> str:
        token = secrets.token_urlsafe(32)
        self._tokens[_digest(token)] = _Grant(env_id, principal)
        return token

    def issue_credentials(self, env_id: str, principal: FunctionPrincipal) -> TemporaryCredentials:
        """Credentials for an environment that gets them as variables (on-demand): tied to a
        token the environment never sees, so `revoke_environment` withdraws them."""
        fresh = self.credentials(self.issue_token(env_id, principal))
        assert fresh is not None  # the token was just issued
        return fresh

    def expiration(self, env_id: str) -> dt.datetime | None:
        """When the current credentials of `env_id` expire (None if it has none)."""
        for digest, grant in self._tokens.items():
            creds = self._by_token.get(digest)
            if grant.env_id == env_id and creds is not None:
                return creds.expiration
        return None

    def retire_environment(self, env_id: str) -> None:
        """Withdraw the tokens of `env_id` (no new credentials from them) but leave the
        credentials already issued valid until their expiry, as Lambda leaves a snapshot's
        init credentials."""
        for digest in [d for d, grant in self._tokens.items() if grant.env_id == env_id]:
            del self._tokens[digest]
            self._by_token.pop(digest, None)

    def _prune(self, now: dt.datetime) -> None:
        """Forget expired keys (retired ones are only removed here)."""
        for key in [k for k, (creds, _) in self._by_key.items() if creds.expiration <= now]:
            del self._by_key[key]

    def revoke_environment(self, env_id: str) -> None:
        for digest in [d for d, grant in self._tokens.items() if grant.env_id == env_id]:
            del self._tokens[digest]
            creds = self._by_token.pop(digest, None)
            if creds is not None:
                self._by_key.pop(creds.access_key_id, None)

    def credentials(self, token: str) -> TemporaryCredentials | None:
        """Current credentials for a valid token (rotated shortly before they expire; the
        rotated-out key stops working at once)."""
        digest = _digest(token)
        grant = self._tokens.get(digest)
        if grant is None:
            return None
        now = self.clock()
        current = self._by_token.get(digest)
        if current is not None and current.expiration - now > REFRESH_MARGIN:
            return current
        self._prune(now)
        fresh = TemporaryCredentials(
            "ASIA" + "".join(secrets.choice(ALPHABET) for _ in range(16)),
            secrets.token_urlsafe(30)[:40],
            secrets.token_urlsafe(48),
            (now + self.ttl).replace(microsecond=0),
        )
        if current is not None:
            self._by_key.pop(current.access_key_id, None)
        self._by_token[digest] = fresh
        self._by_key[fresh.access_key_id] = (fresh, grant.principal)
        return fresh

    def session(self, access_key_id: str, session_token: str | None) -> TemporarySession | None:
        """The secret and principal of unexpired temporary credentials, if the session token matches."""
        entry = self._by_key.get(access_key_id)
        if entry is None or session_token is None:
            return None
        creds, principal = entry
        if not hmac.compare_digest(creds.session_token.encode(), session_token.encode()) or creds.expiration <= self.clock():
            return None
        return TemporarySession(creds.secret_access_key, principal)


class EndpointCredentials:
    """The credentials variables of one environment (see the module docstring)."""

    def __init__(self, broker: IdentityBroker, uri: str, account: str = "000000000000") -> None:
        self.broker = broker
        self.uri = uri
        self.account = account

    def environ(self, identity: str, function: str, role: str, snap_start: bool = False) -> dict[str, str]:
        """Variables for environment `identity` of `function`, whose credentials act as `role`:
        the endpoint URI and a fresh token for SnapStart, the key variables otherwise."""
        principal = FunctionPrincipal(function, role, self.account)
        if snap_start:
            return {
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": self.uri,
                "AWS_CONTAINER_AUTHORIZATION_TOKEN": self.broker.issue_token(identity, principal),
            }
        creds = self.broker.issue_credentials(identity, principal)
        return {
            "AWS_ACCESS_KEY_ID": creds.access_key_id,
            "AWS_SECRET_ACCESS_KEY": creds.secret_access_key,
            "AWS_SESSION_TOKEN": creds.session_token,
        }

    def expires(self, identity: str) -> float | None:
        """Epoch seconds at which the credentials of `identity` expire (None: none issued)."""
        expiration = self.broker.expiration(identity)
        return expiration.timestamp() if expiration is not None else None

    def revoke(self, identity: str) -> None:
        """The environment is gone: its token and credentials stop working at once."""
        self.broker.revoke_environment(identity)

    def retire(self, identity: str) -> None:
        """A snapshot of the environment was taken: no new credentials for its token, the
        issued ones stay valid until their expiry."""
        self.broker.retire_environment(identity)
