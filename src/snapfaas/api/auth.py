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

Per request, only what differs between requests is computed (`CanonicalParts`): the URL's
canonical path and query come from botocore's own functions once per URL, the signing key
(four HMACs) once per secret, date, region and service, and the canonical headers from
botocore's canonicalization over a plain mapping of the signed headers. A request whose signed
headers, host or path are not all ASCII goes through botocore's whole `SigV4Auth` path, as
every request did before (its header mapping treats such values specially).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import re
from collections import OrderedDict
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


class _SignedHeaders(dict):  # type: ignore[type-arg]
    """The signed headers (lowercased names, one value each) as botocore's `canonical_headers`
    reads its header map: names by iteration, values by `get_all`."""

    def get_all(self, name: str) -> list[str]:
        return [self[name]]


class CanonicalParts:
    """What a SigV4 signature is made of that repeats between requests, computed once and kept
    (bounded, least recently used dropped first): the canonical path and query of a URL, and
    the signing key of a secret, date, region and service. `canonical_request` and
    `signature` give the strings and signature botocore's `SigV4Auth` gives for the same input.
    Used from the event loop's thread only (not locked)."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._urls: OrderedDict[str, tuple[str, str, str]] = OrderedDict()  # url -> (path, query, netloc)
        self._keys: OrderedDict[tuple[str, str, str, str], bytes] = OrderedDict()
        self._canonicalizer = SigV4Auth(None, "lambda", "us-east-1")  # its canonicalization needs no key

    def url(self, url: str) -> tuple[str, str, str]:
        """The canonical path, the canonical query and the host (netloc) of `url`, as botocore's
        `canonical_request` and `headers_to_sign` derive them."""
        parts = self._urls.get(url)
        if parts is None:
            split = urlsplit(url)
            parts = (self._canonicalizer._normalize_url_path(split.path),
                     self._canonicalizer._canonical_query_string_url(split), split.netloc)
            _keep(self._urls, url, parts, self.capacity)
        else:
            self._urls.move_to_end(url)
        return parts

    def signing_key(self, secret: str, date: str, region: str, service: str) -> bytes:
        """botocore's ``k_signing``: HMAC chain over the date, region, service and aws4_request."""
        cache_key = (secret, date, region, service)
        key = self._keys.get(cache_key)
        if key is None:
            key = f"AWS4{secret}".encode()
            for part in (date, region, service, "aws4_request"):
                key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
            _keep(self._keys, cache_key, key, self.capacity)
        else:
            self._keys.move_to_end(cache_key)
        return key

    def canonical_request(self, method: str, url: str, headers: Mapping[str, str], payload_sha256: str) -> str:
        """botocore's canonical request (`SigV4Auth.canonical_request` with `_ExactSigner`'s
        headers and payload): `headers` are the signed ones, lowercased; a missing host is the
        URL's, and a signed ``x-amz-content-sha256`` stands for the payload's hash."""
        path, query, netloc = self.url(url)
        signed = _SignedHeaders(headers)
        if "host" not in signed:
            signed["host"] = netloc
        canonicalizer = self._canonicalizer
        checksum = signed.get("x-amz-content-sha256", payload_sha256)
        return "\n".join((method.upper(), path, query, canonicalizer.canonical_headers(signed) + "\n",
                          canonicalizer.signed_headers(signed), checksum))

    def signature(self, canonical_request: str, secret: str, amz_date: str, region: str, service: str) -> str:
        """botocore's hex signature of `canonical_request` (`string_to_sign`, then `signature`)."""
        date = amz_date[0:8]
        string_to_sign = "\n".join(("AWS4-HMAC-SHA256", amz_date, f"{date}/{region}/{service}/aws4_request",
                                     hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()))
        key = self.signing_key(secret, date, region, service)
        # hmac.new with the constructor: hmac.digest and a digest name cost 2-4x (OpenSSL 3 fetches the algorithm)
        return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def _keep(cache: OrderedDict, key: object, value: object, capacity: int) -> None:  # type: ignore[type-arg]
    cache[key] = value
    while len(cache) > capacity:
        cache.popitem(last=False)


def _ascii(method: str, url: str, headers: Mapping[str, str]) -> bool:
    return method.isascii() and url.isascii() and all(value.isascii() for value in headers.values())


_PARTS = CanonicalParts()


def expected_signature(method: str, url: str, headers: Mapping[str, str], payload_sha256: str, access_key_id: str,
                       secret: str, amz_date: str, region: str, service: str) -> str:
    """The signature botocore's `SigV4Auth` (as `_ExactSigner`) computes for this request:
    through `CanonicalParts` for ASCII requests, through botocore itself otherwise."""
    if _ascii(method, url, headers):
        canonical = _PARTS.canonical_request(method, url, headers, payload_sha256)
        return _PARTS.signature(canonical, secret, amz_date, region, service)
    request = AWSRequest(method=method, url=url, headers=dict(headers))
    request.context["timestamp"] = amz_date
    signer = _ExactSigner(Credentials(access_key_id, secret), service, region, payload_sha256)
    canonical = signer.canonical_request(request)
    return signer.signature(signer.string_to_sign(request, canonical), request)


TemporaryLookup = Callable[[str, "str | None"], "TemporarySession | None"]
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
UNSIGNED_REFUSED = (
    "x-amz-content-sha256 UNSIGNED-PAYLOAD is not accepted for requests with a body: "
    "sign the payload (send its SHA-256, or omit the header)."
)


AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z", re.ASCII)


def parse_amz_date(amz_date: str) -> dt.datetime:
    """``X-Amz-Date`` (``20261201T120000Z``) as an aware UTC datetime; raises ValueError as
    ``strptime(amz_date, AMZ_DATE_FORMAT)`` does (which it is, for anything but the strict form)."""
    if _AMZ_DATE.fullmatch(amz_date):
        try:
            return dt.datetime(int(amz_date[0:4]), int(amz_date[4:6]), int(amz_date[6:8]), int(amz_date[9:11]),
                               int(amz_date[11:13]), int(amz_date[13:15]), tzinfo=dt.timezone.utc)
        except ValueError:
            pass  # strptime decides (and words) the refusal
    return dt.datetime.strptime(amz_date, AMZ_DATE_FORMAT).replace(tzinfo=dt.timezone.utc)


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
        expected = expected_signature(self.method, f"http://{self.headers.get('host', 'localhost')}{self.raw_path}",
                                      self.headers, payload_sha256, self.access_key_id, self.secret, self.amz_date,
                                      self.region, self.service)
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
            stamp = parse_amz_date(amz_date)
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
