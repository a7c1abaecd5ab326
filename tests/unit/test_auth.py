"""SigV4 verification (snapfaas.api.auth) against requests signed by botocore, as boto3 signs them."""

from __future__ import annotations

import datetime as dt
import hashlib
from unittest import mock
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from snapfaas.api.auth import MAX_SKEW_S, SigV4Verifier
from snapfaas.errors import AuthError, InvalidSignature, MissingAuthentication, UnrecognizedClient
from snapfaas.principals import Operator

AKID = "SFIATESTKEY000000001"
SECRET = "test-secret-key-for-the-suite-0123456789"
HOST = "127.0.0.1:9000"
NOW = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.timezone.utc)
INVOKE_PATH = (
    "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Af/invocations"
)


def fixed_clock(now: dt.datetime) -> type[dt.datetime]:
    class Clock(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:  # type: ignore[override]
            assert tz is not None
            return now.astimezone(tz)

    return Clock


def sign(
    method: str,
    path_and_query: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    akid: str = AKID,
    secret: str = SECRET,
    when: dt.datetime = NOW,
    region: str = "us-east-1",
) -> dict[str, str]:
    """Sign like botocore does for boto3 (URL already percent-encoded, query on the URL) and
    return the headers as they reach the server, Host included (the HTTP client adds it)."""
    request = AWSRequest(method=method, url=f"http://{HOST}{path_and_query}", data=body,
                         headers=dict(headers or {}))
    auth = SigV4Auth(Credentials(akid, secret), "lambda", region)
    with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        auth.add_auth(request)
    out = dict(request.headers.items())
    out["Host"] = urlsplit(request.url).netloc
    return out


@pytest.fixture
def verifier() -> SigV4Verifier:
    return SigV4Verifier({AKID: SECRET, "OTHERKEY": "other-secret"}, clock=fixed_clock(NOW))


BODY = b'{"hello": "world", "n": [1, 2, 3]}'
CASES = [
    ("POST", INVOKE_PATH, BODY, {"Content-Type": "application/json", "X-Amz-Invocation-Type": "RequestResponse"}),
    ("POST", INVOKE_PATH + "?Qualifier=1", BODY, {}),
    ("GET", "/2015-03-31/functions/?Qualifier=1&Marker=x", b"", {}),
    ("GET", "/2015-03-31/functions/?Marker=x&Qualifier=1&MaxItems=10", b"", {}),
    ("GET", "/2015-03-31/functions/f", b"", {}),
    ("DELETE", "/2015-03-31/functions/f%3A2?Qualifier=2", b"", {}),
    ("PUT", "/2015-03-31/functions/f/configuration", b'{"Timeout": 10}', {"Content-Type": "application/json"}),
    ("GET", "/2015-03-31/functions/?Marker=a%2Fb%3D%3D&FunctionVersion=ALL", b"", {}),
]


@pytest.mark.parametrize(("method", "path", "body", "extra"), CASES)
def test_accepts_botocore_signature(verifier: SigV4Verifier, method: str, path: str, body: bytes,
                                    extra: dict[str, str]) -> None:
    headers = sign(method, path, body, extra)
    assert verifier.verify(method, path, headers, body) == Operator(AKID)


def test_accepts_lowercase_header_names_in_case_insensitive_mapping(verifier: SigV4Verifier) -> None:
    from multidict import CIMultiDict  # what aiohttp hands the verifier

    headers = sign("POST", INVOKE_PATH, BODY)
    lowered = CIMultiDict((k.lower(), v) for k, v in headers.items())
    assert verifier.verify("POST", INVOKE_PATH, lowered, BODY) == Operator(AKID)


def test_accepts_second_key(verifier: SigV4Verifier) -> None:
    headers = sign("GET", "/2015-03-31/functions/", akid="OTHERKEY", secret="other-secret")
    assert verifier.verify("GET", "/2015-03-31/functions/", headers, b"") == Operator("OTHERKEY")


def test_accepts_signed_content_sha256(verifier: SigV4Verifier) -> None:
    headers = sign("POST", INVOKE_PATH, BODY, {"X-Amz-Content-SHA256": hashlib.sha256(BODY).hexdigest()})
    assert verifier.verify("POST", INVOKE_PATH, headers, BODY) == Operator(AKID)
    with pytest.raises(InvalidSignature, match="x-amz-content-sha256"):
        verifier.verify("POST", INVOKE_PATH, headers, BODY + b" ")


# -- rejections ------------------------------------------------------------------------------
def reject(verifier: SigV4Verifier, method: str, path: str, headers: dict[str, str], body: bytes,
           error: type[AuthError]) -> AuthError:
    with pytest.raises(AuthError) as info:
        verifier.verify(method, path, headers, body)
    assert type(info.value) is error, info.value
    assert info.value.status == 403
    return info.value


def test_rejects_tampered_body(verifier: SigV4Verifier) -> None:
    headers = sign("POST", INVOKE_PATH, BODY)
    err = reject(verifier, "POST", INVOKE_PATH, headers, BODY.replace(b"world", b"WORLD"), InvalidSignature)
    assert err.code == "InvalidSignatureException"
    assert "signature we calculated does not match" in err.message
    reject(verifier, "POST", INVOKE_PATH, headers, b"", InvalidSignature)


@pytest.mark.parametrize(
    ("signed", "sent"),
    [
        (INVOKE_PATH, INVOKE_PATH.replace("function%3Af", "function%3Ag")),
        (INVOKE_PATH, INVOKE_PATH.replace("%3A", ":")),  # same decoded path, different bytes on the wire
        (INVOKE_PATH, INVOKE_PATH + "?Qualifier=1"),
        (INVOKE_PATH + "?Qualifier=1", INVOKE_PATH),
        (INVOKE_PATH + "?Qualifier=1", INVOKE_PATH + "?Qualifier=2"),
        ("/2015-03-31/functions/?Qualifier=1&Marker=x", "/2015-03-31/functions/?Qualifier=1&Marker=y"),
        ("/2015-03-31/functions/?Qualifier=1&Marker=x", "/2015-03-31/functions/?Qualifier=1"),
        ("/2015-03-31/functions/?Qualifier=1&Marker=x", "/2015-03-31/functions/?Qualifier=1&Marker=x&A=b"),
    ],
)
def test_rejects_tampered_path_or_query(verifier: SigV4Verifier, signed: str, sent: str) -> None:
    headers = sign("POST", signed, BODY)
    assert verifier.verify("POST", signed, headers, BODY) == Operator(AKID)
    reject(verifier, "POST", sent, headers, BODY, InvalidSignature)


class Captured(Exception):
    def __init__(self, request) -> None:  # type: ignore[no-untyped-def]
        super().__init__("captured")
        self.request = request


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.invoke(FunctionName="arn:aws:lambda:us-east-1:000000000000:function:f", Qualifier="1",
                           Payload=b'{"k": "v"}'),
        lambda c: c.invoke(FunctionName="f:prod", Payload=b"[1, 2]", InvocationType="Event"),
        lambda c: c.list_functions(Marker="x/y=", FunctionVersion="ALL", MaxItems=5),
        lambda c: c.create_alias(FunctionName="f", Name="live", FunctionVersion="1", Description="a b&c"),
        lambda c: c.get_function(FunctionName="123456789012:function:f", Qualifier="$LATEST"),
    ],
)
def test_accepts_real_boto3_client_requests(call) -> None:  # type: ignore[no-untyped-def]
    """The request exactly as a boto3 client puts it on the wire, verified with the real clock."""
    import boto3
    from botocore.config import Config

    client = boto3.client("lambda", endpoint_url=f"http://{HOST}", region_name="us-east-1",
                          aws_access_key_id=AKID, aws_secret_access_key=SECRET,
                          config=Config(retries={"max_attempts": 1}))

    def capture(request, **_):  # type: ignore[no-untyped-def]
        raise Captured(request)

    client.meta.events.register("before-send.lambda.*", capture)
    with pytest.raises(Captured) as info:
        call(client)
    sent = info.value.request
    parts = urlsplit(sent.url)
    raw_path = parts.path + ("?" + parts.query if parts.query else "")
    headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in sent.headers.items()}
    headers["Host"] = parts.netloc
    body = sent.body or b""
    body = body.encode() if isinstance(body, str) else body
    verifier = SigV4Verifier({AKID: SECRET})
    assert verifier.verify(sent.method, raw_path, headers, body) == Operator(AKID)
    with pytest.raises(InvalidSignature):
        verifier.verify(sent.method, raw_path + ("&" if parts.query else "?") + "Extra=1", headers, body)


def test_rejects_tampered_method(verifier: SigV4Verifier) -> None:
    headers = sign("GET", "/2015-03-31/functions/f")
    reject(verifier, "DELETE", "/2015-03-31/functions/f", headers, b"", InvalidSignature)


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-Amz-Invocation-Type", "Event"), ("Content-Type", "text/plain"), ("Host", "127.0.0.1:9001")],
)
def test_rejects_tampered_signed_header(verifier: SigV4Verifier, name: str, value: str) -> None:
    headers = sign("POST", INVOKE_PATH, BODY, {"Content-Type": "application/json",
                                                "X-Amz-Invocation-Type": "RequestResponse"})
    assert verifier.verify("POST", INVOKE_PATH, headers, BODY) == Operator(AKID)
    headers[name] = value
    reject(verifier, "POST", INVOKE_PATH, headers, BODY, InvalidSignature)


def test_rejects_signed_header_missing_from_request(verifier: SigV4Verifier) -> None:
    headers = sign("POST", INVOKE_PATH, BODY, {"X-Amz-Invocation-Type": "RequestResponse"})
    del headers["X-Amz-Invocation-Type"]
    err = reject(verifier, "POST", INVOKE_PATH, headers, BODY, InvalidSignature)
    assert "x-amz-invocation-type" in err.message


def test_unsigned_header_may_change(verifier: SigV4Verifier) -> None:
    headers = sign("POST", INVOKE_PATH, BODY)
    headers["X-Not-Signed"] = "anything"
    headers["User-Agent"] = "changed"  # never signed by botocore
    assert verifier.verify("POST", INVOKE_PATH, headers, BODY) == Operator(AKID)


def test_rejects_wrong_secret(verifier: SigV4Verifier) -> None:
    headers = sign("POST", INVOKE_PATH, BODY, secret="not-the-secret")
    reject(verifier, "POST", INVOKE_PATH, headers, BODY, InvalidSignature)


def test_rejects_unknown_key(verifier: SigV4Verifier) -> None:
    headers = sign("POST", INVOKE_PATH, BODY, akid="SFIAUNKNOWN000000000")
    err = reject(verifier, "POST", INVOKE_PATH, headers, BODY, UnrecognizedClient)
    assert err.code == "UnrecognizedClientException"
    assert err.message == "The security token included in the request is invalid."


def test_rejects_missing_authorization(verifier: SigV4Verifier) -> None:
    headers = sign("POST", INVOKE_PATH, BODY)
    del headers["Authorization"]
    err = reject(verifier, "POST", INVOKE_PATH, headers, BODY, MissingAuthentication)
    assert err.code == "MissingAuthenticationTokenException"
    reject(verifier, "GET", "/", {}, b"", MissingAuthentication)
    reject(verifier, "GET", "/", {"Authorization": ""}, b"", MissingAuthentication)


@pytest.mark.parametrize(
    "value",
    [
        "Bearer abc",
        "AWS4-HMAC-SHA256 Credential=SFIATESTKEY000000001/20261127/us-east-1/lambda/aws4_request",
        "AWS4-HMAC-SHA256 Credential=SFIATESTKEY000000001/20261127/us-east-1/lambda/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=nothex",
        "AWS HMAC",
    ],
)
def test_rejects_malformed_authorization(verifier: SigV4Verifier, value: str) -> None:
    headers = sign("GET", "/2015-03-31/functions/")
    headers["Authorization"] = value
    reject(verifier, "GET", "/2015-03-31/functions/", headers, b"", InvalidSignature)


def test_rejects_missing_or_malformed_date(verifier: SigV4Verifier) -> None:
    headers = sign("GET", "/2015-03-31/functions/")
    headers["X-Amz-Date"] = "2026-11-27T12:00:00Z"
    reject(verifier, "GET", "/2015-03-31/functions/", headers, b"", InvalidSignature)
    del headers["X-Amz-Date"]
    reject(verifier, "GET", "/2015-03-31/functions/", headers, b"", InvalidSignature)


def test_rejects_date_not_matching_credential_scope(verifier: SigV4Verifier) -> None:
    headers = sign("GET", "/2015-03-31/functions/")
    headers["Authorization"] = headers["Authorization"].replace("/20261127/", "/20261126/")
    err = reject(verifier, "GET", "/2015-03-31/functions/", headers, b"", InvalidSignature)
    assert "Credential date" in err.message


@pytest.mark.parametrize("offset_s", [MAX_SKEW_S + 1, 24 * 3600])
def test_rejects_an_expired_date_with_awss_message(offset_s: int) -> None:
    headers = sign("POST", INVOKE_PATH, BODY)
    now = NOW + dt.timedelta(seconds=offset_s)  # the server's clock is ahead: the request is old
    verifier = SigV4Verifier({AKID: SECRET}, clock=fixed_clock(now))
    err = reject(verifier, "POST", INVOKE_PATH, headers, BODY, InvalidSignature)
    fmt = "%Y%m%dT%H%M%SZ"
    assert err.message == (f"Signature expired: 20261127T120000Z is now earlier than "
                           f"{(now - dt.timedelta(minutes=5)).strftime(fmt)} ({now.strftime(fmt)} - 5 min.)")


@pytest.mark.parametrize("offset_s", [MAX_SKEW_S + 1, 24 * 3600])
def test_rejects_a_future_date_with_awss_message(offset_s: int) -> None:
    headers = sign("POST", INVOKE_PATH, BODY)
    now = NOW - dt.timedelta(seconds=offset_s)  # the server's clock is behind: the request is from the future
    verifier = SigV4Verifier({AKID: SECRET}, clock=fixed_clock(now))
    err = reject(verifier, "POST", INVOKE_PATH, headers, BODY, InvalidSignature)
    fmt = "%Y%m%dT%H%M%SZ"
    assert err.message == (f"Signature not yet current: 20261127T120000Z is still later than "
                           f"{(now + dt.timedelta(minutes=5)).strftime(fmt)} ({now.strftime(fmt)} + 5 min.)")


def test_the_skew_limit_is_awss_five_minutes() -> None:
    assert MAX_SKEW_S == 300


@pytest.mark.parametrize("offset_s", [MAX_SKEW_S - 1, -(MAX_SKEW_S - 1), 0])
def test_accepts_clock_skew_within_limit(offset_s: int) -> None:
    headers = sign("POST", INVOKE_PATH, BODY)
    verifier = SigV4Verifier({AKID: SECRET}, clock=fixed_clock(NOW + dt.timedelta(seconds=offset_s)))
    assert verifier.verify("POST", INVOKE_PATH, headers, BODY) == Operator(AKID)


def test_replayed_date_header_cannot_be_refreshed(verifier: SigV4Verifier) -> None:
    """An old signed request with a fresh X-Amz-Date must not verify (the date is signed)."""
    old = sign("POST", INVOKE_PATH, BODY, when=NOW - dt.timedelta(hours=1))
    old["X-Amz-Date"] = NOW.strftime("%Y%m%dT%H%M%SZ")
    reject(verifier, "POST", INVOKE_PATH, old, BODY, InvalidSignature)


def test_signature_for_other_region_still_matches_its_own_scope(verifier: SigV4Verifier) -> None:
    # the scope is taken from the client's Credential, so any region the client signs for verifies
    headers = sign("GET", "/2015-03-31/functions/", region="eu-west-1")
    assert verifier.verify("GET", "/2015-03-31/functions/", headers, b"") == Operator(AKID)
    headers["Authorization"] = headers["Authorization"].replace("/eu-west-1/", "/us-east-1/")
    reject(verifier, "GET", "/2015-03-31/functions/", headers, b"", InvalidSignature)


def test_accepts_client_that_signs_user_agent(verifier: SigV4Verifier) -> None:
    with mock.patch("botocore.auth.SIGNED_HEADERS_BLACKLIST", []):
        headers = sign("POST", INVOKE_PATH, BODY, {"User-Agent": "some-sdk/1.0"})
    assert "user-agent" in headers["Authorization"]
    assert verifier.verify("POST", INVOKE_PATH, headers, BODY) == Operator(AKID)


# -- two phases: headers before the body ----------------------------------------------------
def test_header_checks_need_no_body(verifier: SigV4Verifier) -> None:
    """Unknown key, stale date, bad shape: refused from the headers alone."""
    headers = sign("POST", INVOKE_PATH, BODY, akid="SFIAUNKNOWN000000000")
    with pytest.raises(UnrecognizedClient):
        verifier.check_headers("POST", INVOKE_PATH, headers)
    stale = sign("POST", INVOKE_PATH, BODY, when=NOW - dt.timedelta(hours=1))
    with pytest.raises(InvalidSignature, match="Signature expired"):
        verifier.check_headers("POST", INVOKE_PATH, stale)
    good = sign("POST", INVOKE_PATH, BODY)
    pending = verifier.check_headers("POST", INVOKE_PATH, good)
    assert pending.verify(BODY) == Operator(AKID)
    with pytest.raises(InvalidSignature):
        pending.verify(BODY + b" ")


def test_unsigned_payload_is_refused_with_a_body(verifier: SigV4Verifier) -> None:
    headers = sign("POST", INVOKE_PATH, BODY, {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    err = reject(verifier, "POST", INVOKE_PATH, headers, BODY, InvalidSignature)
    assert "UNSIGNED-PAYLOAD is not accepted" in err.message
    put = sign("PUT", "/2015-03-31/functions/f/code", b"", {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    reject(verifier, "PUT", "/2015-03-31/functions/f/code", put, b"", InvalidSignature)
    with_length = sign("GET", "/2015-03-31/functions/", b"", {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD", "Content-Length": "5"})
    reject(verifier, "GET", "/2015-03-31/functions/", with_length, b"", InvalidSignature)


def test_unsigned_payload_without_body_is_accepted(verifier: SigV4Verifier) -> None:
    headers = sign("GET", "/2015-03-31/functions/", b"", {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert verifier.verify("GET", "/2015-03-31/functions/", headers, b"") == Operator(AKID)


def test_temporary_credentials_resolve_to_their_function() -> None:
    from snapfaas.identity import IdentityBroker
    from snapfaas.principals import FunctionPrincipal

    broker = IdentityBroker(clock=lambda: NOW)
    principal = FunctionPrincipal("fn", "arn:aws:iam::000000000000:role/r")
    creds = broker.credentials(broker.issue_token("env", principal))
    assert creds is not None
    verifier = SigV4Verifier({AKID: SECRET}, clock=fixed_clock(NOW), temporary=broker.session)
    headers = sign("GET", "/2015-03-31/functions/", akid=creds.access_key_id, secret=creds.secret_access_key)
    headers["X-Amz-Security-Token"] = creds.session_token
    assert verifier.verify("GET", "/2015-03-31/functions/", headers, b"") == principal
    headers["X-Amz-Security-Token"] = "forged"
    reject(verifier, "GET", "/2015-03-31/functions/", headers, b"", UnrecognizedClient)


# -- the cached canonicalization is botocore's ---------------------------------------------------
def botocore_signature(method: str, url: str, headers: dict[str, str], payload_sha256: str, secret: str,
                       amz_date: str, region: str, service: str = "lambda") -> str:
    """The signature botocore's whole `SigV4Auth` path computes (what every request used)."""
    from snapfaas.api.auth import _ExactSigner

    request = AWSRequest(method=method, url=url, headers=dict(headers))
    request.context["timestamp"] = amz_date
    signer = _ExactSigner(Credentials("AKID", secret), service, region, payload_sha256)
    return signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)


EMPTY_SHA = hashlib.sha256(b"").hexdigest()
EQUIVALENCE = [
    ("POST", f"http://{HOST}{INVOKE_PATH}", {"host": HOST, "x-amz-date": "20261127T120000Z"}),
    ("post", f"http://{HOST}{INVOKE_PATH}?Qualifier=1", {"host": HOST}),
    ("GET", f"http://{HOST}/2015-03-31/functions/?Marker=x&Qualifier=1&MaxItems=10&Marker=a", {"host": HOST}),
    ("GET", f"http://{HOST}/2015-03-31/functions/?b&a=&c=%2F%3D", {"host": HOST}),
    ("GET", f"http://{HOST}/a/./b/../c//d/%7Etilde~/sp%20ace", {"host": HOST}),
    ("GET", f"http://{HOST}/raw path/with:colon?q=a b", {"host": HOST}),
    ("GET", f"http://{HOST}", {"host": HOST}),
    ("GET", "http://localhost/2015-03-31/functions/f", {"x-amz-date": "20261127T120000Z"}),  # host not signed
    ("PUT", f"http://{HOST}/f#frag", {"host": HOST, "content-type": "  application/json ;  charset=utf-8  "}),
    ("POST", f"http://{HOST}/f", {"host": HOST, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}),
    ("POST", f"http://{HOST}/f", {"host": HOST, "x-amz-content-sha256": EMPTY_SHA, "user-agent": "a\tb  c"}),
    ("POST", f"http://{HOST}/f", {"host": HOST, "x-amz-meta": ""}),
]


@pytest.mark.parametrize(("method", "url", "headers"), EQUIVALENCE)
@pytest.mark.parametrize("region", ["us-east-1", "eu-west-3"])
def test_cached_canonicalization_signs_as_botocore_does(method: str, url: str, headers: dict[str, str],
                                                        region: str) -> None:
    from snapfaas.api.auth import CanonicalParts

    parts = CanonicalParts(capacity=2)
    for attempt in range(3):  # first computed, then from the caches (a capacity of 2 also evicts)
        for secret, date in ((SECRET, "20261127T120000Z"), ("other", "20261128T000001Z")):
            canonical = parts.canonical_request(method, url, headers, EMPTY_SHA)
            assert parts.signature(canonical, secret, date, region, "lambda") == \
                botocore_signature(method, url, headers, EMPTY_SHA, secret, date, region), (attempt, secret)


def test_non_ascii_requests_go_through_botocore() -> None:
    from snapfaas.api.auth import expected_signature

    url = f"http://{HOST}/f"
    for headers in ({"host": HOST, "x-amz-meta": "caf\u00e9"}, {"host": HOST, "x-amz-meta": "bad\udcff"}):
        try:
            reference: object = botocore_signature("POST", url, headers, EMPTY_SHA, SECRET, "20261127T120000Z", "us-east-1")
        except Exception as exc:  # noqa: BLE001 - the same failure must come out of both
            reference = type(exc)
        try:
            ours: object = expected_signature("POST", url, headers, EMPTY_SHA, "AKID", SECRET, "20261127T120000Z",
                                              "us-east-1", "lambda")
        except Exception as exc:  # noqa: BLE001
            ours = type(exc)
        assert ours == reference


@pytest.mark.parametrize("value", ["20261127T120000Z", "20240229T235959Z", "20230229T120000Z", "20261127T126000Z",
                                   "20261127T120060Z", "20261327T120000Z", "2026112T1200000Z", "20261127T120000",
                                   "20261127t120000Z", "2026-11-27T12:00:00Z", "", "\u0662\u0660261127T120000Z",
                                   "20261127T120000Z ", "00001127T120000Z"])
def test_amz_date_parses_as_strptime_does(value: str) -> None:
    from snapfaas.api.auth import AMZ_DATE_FORMAT, parse_amz_date

    try:
        reference: object = dt.datetime.strptime(value, AMZ_DATE_FORMAT).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        reference = ValueError
    try:
        ours: object = parse_amz_date(value)
    except ValueError:
        ours = ValueError
    assert ours == reference
