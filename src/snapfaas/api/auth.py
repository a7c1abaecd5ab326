"""AWS Signature Version 4 verification of incoming requests.

The canonical request and string to sign are computed with botocore's own `SigV4Auth` (the
same code boto3 and the AWS CLI sign with), fed the request exactly as it arrived: raw path
and query as sent on the wire, only the headers the client listed in ``SignedHeaders``, the
body bytes, and the client's ``X-Amz-Date``. The signature must match in constant time and
the timestamp must be within `MAX_SKEW_S` of the server clock.

Verification is two-phase: `SigV4Verifier.check_headers` checks everything the headers alone
decide (shape, key, date, scope, signed headers present, no ``UNSIGNED-PAYLOAD`` with a body)
before the body is read; `PendingSignature.verify` then checks the payload hash and signature
(`PendingSignature.verify_payload` does so from the body's SHA-256 alone, so a body streamed
to disk is verified before it is loaded into memory).
The result is the caller's `Principal`: the operator, or the function whose environment holds
the temporary credentials.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping

from botocore.auth import UNSIGNED_PAYLOAD, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.compat import HTTPHeaders, urlsplit

from snapfaas.errors import InvalidSignature, MissingAuthentication, UnrecognizedClient
from snapfaas.identity import TemporarySession
from snapfaas.principals import Operator, Principal

MAX_SKEW_S = 5 * 60  # AWS's limit, either side of the server clock
AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<akid>[^/\s,]+)/(?P<date>\d{8})/(?P<region>[^/\s,]+)/(?P<service>[^/\s,]+)/aws4_request,\s*"
    r"SignedHeaders=(?P<signed>[a-z0-9\-;.]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key "
    "and signing method. Consult the service documentation for details."
)


class _ExactSigner(SigV4Auth):
    """botocore's signer, but signing exactly the headers the client listed.

    botocore never signs a few headers itself (user-agent, x-amzn-trace-id, ...) and drops them
    when computing a signature; another SigV4 client may sign them, so the verifier must not.
    The payload's SHA-256 is given, not computed from a body.
    """

    def __init__(self, credentials: Credentials, service: str, region: str, payload_sha256: str) -> None:
        super().__init__(credentials, service, region)
        self.payload_sha256 = payload_sha256

    def payload(self, request: AWSRequest) -> str:
        return self.payload_sha256

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        out = HTTPHeaders()
        for name, value in request.headers.items():
            out[name.lower()] = value
        if "host" not in out:
            out["host"] = urlsplit(request.url).netloc
        return out


TemporaryLookup = Callable[[str, "str | None"], "TemporarySession | None"]
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
UNSIGNED_REFUSED = (
    "x-amz-content-sha256 UNSIGNED-PAYLOAD is not accepted for requests with a body: "
    "sign the payload (send its SHA-256, or omit the header)."
)


def skew_error(amz_date: str, stamp: dt.datetime, now: dt.datetime) -> str | None:
    """AWS's message for a request signed more than `MAX_SKEW_S` before or after `now`, else None."""
    window = dt.timedelta(seconds=MAX_SKEW_S)
    minutes = MAX_SKEW_S // 60
    fmt = "%Y%m%dT%H%M%SZ"
    if stamp < now - window:
        return (f"Signature expired: {amz_date} is now earlier than {(now - window).strftime(fmt)} "
                f"({now.strftime(fmt)} - {minutes} min.)")
    if stamp > now + window:
        return (f"Signature not yet current: {amz_date} is still later than {(now + window).strftime(fmt)} "
                f"({now.strftime(fmt)} + {minutes} min.)")
    return None


@dataclasses.dataclass(frozen=True)
class PendingSignature:
    """A request whose headers passed every check; the body decides the rest.

    Made by `SigV4Verifier.check_headers` before the body is read, so a request with an
    unknown key, a stale date or a malformed header is refused without buffering its body.
    """

    method: str
    raw_path: str
    headers: Mapping[str, str]  # lowercased names, only the signed ones
    access_key_id: str
    secret: str
    principal: Principal
    service: str
    region: str
    amz_date: str
    signed_at: dt.datetime
    signature: str
    content_sha: str | None

    def verify(self, body: bytes) -> Principal:
        """Check the payload hash and the signature; return the caller or raise `InvalidSignature`."""
        return self.verify_payload(hashlib.sha256(body).hexdigest(), len(body))

    def verify_payload(self, payload_sha256: str, size: int) -> Principal:
        """`verify`, given the body's SHA-256 (hex) and length instead of the body."""
        if self.content_sha == UNSIGNED_PAYLOAD:
            if size:
                raise InvalidSignature(UNSIGNED_REFUSED)
        elif self.content_sha and self.content_sha != payload_sha256:
            raise InvalidSignature("The provided 'x-amz-content-sha256' header does not match what was computed.")
        request = AWSRequest(
            method=self.method,
            url=f"http://{self.headers.get('host', 'localhost')}{self.raw_path}",
            headers=dict(self.headers),
        )
        request.context["timestamp"] = self.amz_date
        signer = _ExactSigner(Credentials(self.access_key_id, self.secret), self.service, self.region, payload_sha256)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, self.signature):
            raise InvalidSignature(SIGNATURE_MISMATCH)
        return self.principal


class SigV4Verifier:
    def __init__(
        self,
        keys: Mapping[str, str],
        clock: type[dt.datetime] = dt.datetime,
        temporary: TemporaryLookup | None = None,
    ) -> None:
        """`keys`: the operator's long-term key pairs; `temporary(akid, session_token)` returns
        the secret and principal of unexpired temporary credentials (issued to execution
        environments), if any."""
        self.keys = dict(keys)
        self.clock = clock
        self.temporary = temporary

    def verify(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> Principal:
        """Return the caller, or raise an `AuthError` leaf."""
        return self.check_headers(method, raw_path, headers).verify(body)

    def check_headers(self, method: str, raw_path: str, headers: Mapping[str, str]) -> PendingSignature:
        """Everything that does not need the body: header shape, key, date, scope, signed headers."""
        header = headers.get("Authorization")
        if not header:
            raise MissingAuthentication("Missing Authentication Token")
        match = AUTH_RE.match(header.strip())
        if match is None:
            raise InvalidSignature("Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters (AWS4-HMAC-SHA256)")
        akid = match["akid"]
        secret = self._operator_secret(akid)
        principal: Principal = Operator(akid)
        if secret is None and self.temporary is not None:
            session = self.temporary(akid, headers.get("X-Amz-Security-Token"))
            if session is not None:
                secret, principal = session.secret_access_key, session.principal
        if secret is None:
            raise UnrecognizedClient("The security token included in the request is invalid.")
        amz_date = headers.get("X-Amz-Date", "")
        try:
            stamp = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError as exc:
            raise InvalidSignature("X-Amz-Date header is missing or malformed") from exc
        skewed = skew_error(amz_date, stamp, self.clock.now(dt.timezone.utc))
        if skewed is not None:
            raise InvalidSignature(skewed)
        if amz_date[:8] != match["date"]:
            raise InvalidSignature("Credential date does not match X-Amz-Date")
        lowered = {k.lower(): v for k, v in headers.items()}
        content_sha = lowered.get("x-amz-content-sha256")
        if content_sha == UNSIGNED_PAYLOAD and _has_body(method, lowered):
            raise InvalidSignature(UNSIGNED_REFUSED)
        signed = match["signed"].split(";")
        missing = [h for h in signed if h not in lowered]
        if missing:
            raise InvalidSignature(f"Signed header(s) missing from the request: {', '.join(missing)}")
        return PendingSignature(
            method=method, raw_path=raw_path, headers={h: lowered[h] for h in signed}, access_key_id=akid,
            secret=secret, principal=principal, service=match["service"], region=match["region"], amz_date=amz_date,
            signed_at=stamp, signature=match["signature"], content_sha=content_sha,
        )

    def _operator_secret(self, akid: str) -> str | None:
        """The operator's secret for `akid` (key ids are not secret: a dict lookup is fine)."""
        return self.keys.get(akid)


def _has_body(method: str, lowered: Mapping[str, str]) -> bool:
    length = lowered.get("content-length", "0").strip()
    return method.upper() in BODY_METHODS or "transfer-encoding" in lowered or length not in ("", "0")
