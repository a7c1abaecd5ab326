"""Transport and request hardening on a real server: signature checked before a large body is
read, UNSIGNED-PAYLOAD refused, TLS (``--tls-cert/--tls-key``), and the replay cache."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, SSLError

from tests.conftest import ACCESS_KEY, SECRET_KEY, ProcessFactory, ServerHandle, create, invoke_json, require_root, run_server
from tests.e2e.test_control_plane import echo_code
from tests.tls_support import self_signed

DEADLINE_S = 60  # a guard against hanging forever, not a timing assertion


def send_raw(port: int, data: bytes, context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send `data` on a fresh connection and read one response (status, headers, body)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
    with sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def signed_raw(port: int, method: str, path: str, body: bytes = b"", extra: dict[str, str] | None = None,
               key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> bytes:
    """A request signed as botocore signs it, as raw HTTP/1.1 bytes (one request per connection)."""
    host = f"127.0.0.1:{port}"
    request = AWSRequest(method=method, url=f"http://{host}{path}", data=body, headers=dict(extra or {}))
    SigV4Auth(Credentials(key, secret), "lambda", "us-east-1").add_auth(request)
    headers = {"Host": host, **dict(request.headers.items()), "Content-Length": str(len(body)), "Connection": "close"}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


def big_upload_headers(port: int, authorization: str, amz_date: str) -> bytes:
    """Headers of a 60 MB CreateFunction whose body is never sent."""
    return (f"POST /2015-03-31/functions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {60 * 1024 * 1024}\r\nX-Amz-Date: {amz_date}\r\nAuthorization: {authorization}\r\n\r\n").encode()


def amz_now(offset: dt.timedelta = dt.timedelta()) -> str:
    return (dt.datetime.now(dt.timezone.utc) + offset).strftime("%Y%m%dT%H%M%SZ")


def authorization(key: str, amz_date: str) -> str:
    return (f"AWS4-HMAC-SHA256 Credential={key}/{amz_date[:8]}/us-east-1/lambda/aws4_request, "
            f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}")


# -- signature before body -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "date_offset", "code"),
    [
        ("unknown", dt.timedelta(), "UnrecognizedClientException"),
        ("known", dt.timedelta(hours=-1), "InvalidSignatureException"),  # stale date
        ("malformed", dt.timedelta(), "InvalidSignatureException"),
    ],
)
def test_large_unauthenticated_upload_is_refused_without_its_body(server: ServerHandle, lam, auth: str,
                                                                  date_offset: dt.timedelta, code: str) -> None:  # type: ignore[no-untyped-def]
    amz_date = amz_now(date_offset)
    header = {"unknown": authorization("SFIAUNKNOWN000000000", amz_date), "known": authorization(ACCESS_KEY, amz_date),
              "malformed": "AWS4-HMAC-SHA256 Credential=nonsense"}[auth]
    status, headers, body = send_raw(server.port, big_upload_headers(server.port, header, amz_date))  # no body sent
    assert status == 403
    assert headers["x-amzn-errortype"] == code, body
    with urllib.request.urlopen(server.endpoint + "/snapfaas/v1/health", timeout=DEADLINE_S) as health:
        assert health.status == 200  # the server keeps serving
    assert isinstance(lam.list_functions()["Functions"], list)


def test_unsigned_payload_is_refused_for_invoke(server: ServerHandle, lam) -> None:  # type: ignore[no-untyped-def]
    create(lam, "unsigned-target", echo_code())
    client = server.client()

    def unsigned(request, **_):  # type: ignore[no-untyped-def]
        request.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"  # signed as the payload hash

    client.meta.events.register("before-sign.lambda.Invoke", unsigned)
    with pytest.raises(ClientError) as refused:
        client.invoke(FunctionName="unsigned-target", Payload=b'{"a": 1}')
    error = refused.value.response["Error"]
    assert (refused.value.response["ResponseMetadata"]["HTTPStatusCode"], error["Code"]) == (403, "InvalidSignatureException")
    assert "UNSIGNED-PAYLOAD is not accepted" in error["Message"]
    _, body = invoke_json(lam, "unsigned-target", {"a": 1})  # properly signed: fine
    assert body["event"] == {"a": 1}


def test_captured_request_may_be_replayed_without_the_cache(server: ServerHandle, lam) -> None:  # type: ignore[no-untyped-def]
    create(lam, "replayed", echo_code())
    raw = signed_raw(server.port, "POST", "/2015-03-31/functions/replayed/invocations", b'{"n": 1}')
    for _ in range(2):
        status, _, body = send_raw(server.port, raw)
        assert (status, json.loads(body)["event"]) == (200, {"n": 1})


# -- TLS and the replay cache ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    require_root()
    base = tmp_path_factory.mktemp("tls-server")
    cert, key = self_signed(base / "tls")
    yield from run_server(processes, base, ["--keep-alive", "60", "--tls-cert", str(cert), "--tls-key", str(key),
                                            "--replay-cache"])


def test_boto3_over_tls_with_the_servers_certificate(tls_server: ServerHandle) -> None:
    assert tls_server.endpoint.startswith("https://")
    lam = tls_server.client()
    create(lam, "tls-echo", echo_code(), poll_s=1.1)  # --replay-cache: identical polls within a second are replays
    _, body = invoke_json(lam, "tls-echo", {"over": "tls"})
    assert body["event"] == {"over": "tls"}
    untrusting = boto3.client("lambda", endpoint_url=tls_server.endpoint, region_name="us-east-1",
                              aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                              config=Config(retries={"total_max_attempts": 1}))
    with pytest.raises(SSLError):  # without the certificate the client refuses the server
        untrusting.list_functions()


def test_plain_http_to_the_tls_port_fails(tls_server: ServerHandle) -> None:
    with pytest.raises((OSError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://127.0.0.1:{tls_server.port}/snapfaas/v1/health", timeout=DEADLINE_S).read()
    with urllib.request.urlopen(tls_server.endpoint + "/snapfaas/v1/health", timeout=DEADLINE_S,
                                context=tls_server.ssl_context()) as health:
        assert health.status == 200  # still serving


def test_replay_is_refused_with_the_cache(tls_server: ServerHandle) -> None:
    lam = tls_server.client()
    create(lam, "replay-target", echo_code(), poll_s=1.1)  # --replay-cache, as above
    raw = signed_raw(tls_server.port, "POST", "/2015-03-31/functions/replay-target/invocations", b'{"n": 2}')
    status, _, body = send_raw(tls_server.port, raw, tls_server.ssl_context())
    assert (status, json.loads(body)["event"]) == (200, {"n": 2})
    status, headers, body = send_raw(tls_server.port, raw, tls_server.ssl_context())
    assert (status, headers["x-amzn-errortype"]) == (403, "InvalidSignatureException")
    assert "replayed" in json.loads(body)["message"]
    _, fresh = invoke_json(lam, "replay-target", {"n": 3})  # a freshly signed request is fine
    assert fresh["event"] == {"n": 3}


def test_unusable_tls_files_stop_startup_with_a_clear_error(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    cases = [
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key)], "TLS setup failed at step 'read certificate'"),
        (["--tls-cert", str(cert), "--tls-key", str(other_key)], "key must match the certificate"),
        (["--tls-cert", str(cert)], "--tls-cert and --tls-key go together"),
    ]
    for args, message in cases:
        run = subprocess.run([sys.executable, "-m", "snapfaas", "serve", "--data-dir", str(tmp_path / "data"), *args],
                             capture_output=True, text=True, timeout=DEADLINE_S)
        assert run.returncode != 0
        assert message in run.stderr, run.stderr
