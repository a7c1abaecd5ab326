"""AWS Signature Version 4 verification of incoming requests.

The canonical request and string to sign are computed with botocore's own `SigV4Auth` (the
same code boto3 and the AWS CLI sign with), fed the request exactly as it arrived: raw path
and query as sent on the wire, only the headers the client listed in ``SignedHeaders``, the
body bytes, and the client's ``X-Amz-Date``. The signature must match in constant time and
the timestamp must be within `MAX_SKEW_S` of the server clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.compat import HTTPHeaders, urlsplit

from snapfaas.errors import InvalidSignature, MissingAuthentication, UnrecognizedClient

MAX_SKEW_S = 15 * 60
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
    """

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        out = HTTPHeaders()
        for name, value in request.headers.items():
            out[name.lower()] = value
        if "host" not in out:
            out["host"] = urlsplit(request.url).netloc
        return out


TemporaryLookup = Callable[[str, "str | None"], "str | None"]


class SigV4Verifier:
    def __init__(
        self,
        keys: Mapping[str, str],
        clock: type[dt.datetime] = dt.datetime,
        temporary: TemporaryLookup | None = None,
    ) -> None:
        """`keys`: long-term key pairs; `temporary(akid, session_token)` returns the secret of
        unexpired temporary credentials (issued to execution environments), if any."""
        self.keys = dict(keys)
        self.clock = clock
        self.temporary = temporary

    def verify(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> str:
        """Return the caller's access key id, or raise an `AuthError` leaf."""
        header = headers.get("Authorization")
        if not header:
            raise MissingAuthentication("Missing Authentication Token")
        match = AUTH_RE.match(header.strip())
        if match is None:
            raise InvalidSignature("Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters (AWS4-HMAC-SHA256)")
        akid = match["akid"]
        secret = self.keys.get(akid)
        if secret is None and self.temporary is not None:
            secret = self.temporary(akid, headers.get("X-Amz-Security-Token"))
        if secret is None:
            raise UnrecognizedClient("The security token included in the request is invalid.")
        amz_date = headers.get("X-Amz-Date", "")
        try:
            stamp = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError as exc:
            raise InvalidSignature("X-Amz-Date header is missing or malformed") from exc
        now = self.clock.now(dt.timezone.utc)
        if abs((now - stamp).total_seconds()) > MAX_SKEW_S:
            raise InvalidSignature(
                f"Signature expired: {amz_date} is now earlier than {(now - dt.timedelta(seconds=MAX_SKEW_S)).strftime('%Y%m%dT%H%M%SZ')}"
            )
        if amz_date[:8] != match["date"]:
            raise InvalidSignature("Credential date does not match X-Amz-Date")
        content_sha = headers.get("X-Amz-Content-SHA256")
        if content_sha and content_sha != "UNSIGNED-PAYLOAD" and content_sha != hashlib.sha256(body).hexdigest():
            raise InvalidSignature("The provided 'x-amz-content-sha256' header does not match what was computed.")
        signed = match["signed"].split(";")
        missing = [h for h in signed if h not in {k.lower() for k in headers}]
        if missing:
            raise InvalidSignature(f"Signed header(s) missing from the request: {', '.join(missing)}")
        lowered = {k.lower(): v for k, v in headers.items()}
        request = AWSRequest(
            method=method,
            url=f"http://{lowered.get('host', 'localhost')}{raw_path}",
            headers={h: lowered[h] for h in signed},
            data=body,
        )
        request.context["timestamp"] = amz_date
        signer = _ExactSigner(Credentials(akid, secret), match["service"], match["region"])
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, match["signature"]):
            raise InvalidSignature(SIGNATURE_MISMATCH)
        return akid
