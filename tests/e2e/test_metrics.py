"""GET /metrics on a real server after a scripted sequence through boto3: a cold start, warm
invokes, a function error, a SnapStart restore, a throttle. Every number the sequence implies
is checked exactly; the durations are the very ones the REPORT lines printed."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from snapfaas.metrics import parse, sample_value
from tests.conftest import ACCESS_KEY, SECRET_KEY, create
from tests.e2e.snapstart_support import SNAPSTART, assert_restored, publish, report

APP = """
def handler(event, context):
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"version": context.function_version}
"""
NAME = "metered"


def scrape(server, *, signed: bool = True, token: str | None = None) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    """(status, content type, body) of GET /metrics, SigV4-signed as the operator or with a token."""
    url = server.endpoint + "/metrics"
    headers: dict[str, str] = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    elif signed:
        request = AWSRequest(method="GET", url=url)
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "lambda", "us-east-1").add_auth(request)
        headers = dict(request.headers.items())
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


def invoke(lam, payload: bytes = b"{}", **kwargs: object) -> dict:  # type: ignore[no-untyped-def]
    response = lam.invoke(FunctionName=NAME, Payload=payload, LogType="Tail", **kwargs)
    response["Body"] = response["Payload"].read()
    return response


def ms(field: str) -> float:
    return float(field.removesuffix(" ms"))


@pytest.fixture(scope="module")
def sequence(lam, server):  # type: ignore[no-untyped-def]
    """Run the sequence once; the REPORT fields of the cold start and the restore."""
    create(lam, NAME, {"app.py": APP}, Runtime="python3.11", SnapStart=SNAPSTART, Timeout=15)
    cold = report(invoke(lam)["LogResult"])  # $LATEST: on-demand cold start
    invoke(lam)  # warm
    failed = invoke(lam, b'{"fail": true}')  # warm, function error
    assert failed["FunctionError"] == "Unhandled"
    publish(lam, NAME)
    restored = assert_restored(invoke(lam, Qualifier="1")["LogResult"])  # a restore of version 1
    lam.put_function_concurrency(FunctionName=NAME, ReservedConcurrentExecutions=0)
    with pytest.raises(ClientError) as throttled:
        invoke(lam)
    assert throttled.value.response["Error"]["Code"] == "TooManyRequestsException"
    lam.delete_function_concurrency(FunctionName=NAME)
    return cold, restored


def test_metrics_after_the_sequence_match_exactly(server, sequence) -> None:  # type: ignore[no-untyped-def]
    cold, restored = sequence
    status, content_type, text = scrape(server)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")

    def value(name: str, **labels: str) -> float | None:
        return sample_value(text, name, function=NAME, **labels) if "function" not in labels else sample_value(text, name, **labels)

    assert value("snapfaas_invocations_total", version="$LATEST", outcome="success") == 2
    assert value("snapfaas_invocations_total", version="$LATEST", outcome="function_error") == 1
    assert value("snapfaas_invocations_total", version="$LATEST", outcome="throttled") == 1
    assert value("snapfaas_invocations_total", version="1", outcome="success") == 1
    ours = [(n, l) for n, l, _ in parse(text) if n == "snapfaas_invocations_total" and l.get("function") == NAME]
    assert len(ours) == 4  # no other outcome or version was recorded
    assert value("snapfaas_invocation_latency_seconds_count", version="$LATEST", start="cold") == 1
    assert value("snapfaas_invocation_latency_seconds_count", version="$LATEST", start="warm") == 2
    assert value("snapfaas_invocation_latency_seconds_count", version="1", start="restore") == 1
    assert value("snapfaas_invocation_latency_seconds_count", version="1", start="cold") is None
    assert value("snapfaas_invocation_duration_seconds_count", version="$LATEST") == 3
    # the durations are the REPORT's (printed with 2 decimals in ms)
    assert value("snapfaas_init_duration_seconds_count", version="$LATEST") == 1
    assert value("snapfaas_init_duration_seconds_sum", version="$LATEST") == pytest.approx(ms(cold["Init Duration"]) / 1000, abs=1e-5)
    assert value("snapfaas_restore_duration_seconds_count", version="1") == 1
    assert value("snapfaas_restore_duration_seconds_sum", version="1") == pytest.approx(ms(restored["Restore Duration"]) / 1000, abs=1e-5)
    assert value("snapfaas_init_duration_seconds_count", version="1") is None
    assert value("snapfaas_throttles_total", reason="ReservedFunctionConcurrentInvocationLimitExceeded") == 1
    # state: one idle environment per version (keep-alive 60 s), the snapshot, the queue
    assert value("snapfaas_environments", version="$LATEST", state="idle") == 1
    assert value("snapfaas_environments", version="$LATEST", state="busy") == 0
    assert value("snapfaas_environments", version="1", state="idle") == 1
    assert sample_value(text, "snapfaas_snapstart_versions", state="Active") == 1
    assert sample_value(text, "snapfaas_snapstart_versions", state="Pending") == 0
    assert (value("snapfaas_snapshot_bytes", version="1") or 0) > 1 << 20  # a Python process image
    # the publish stored the snapshot's chunks in the origin (the restore read the RAM cache's copy)
    assert (sample_value(text, "snapfaas_store_written_bytes_total", tier="origin") or 0) > 0
    assert sample_value(text, "snapfaas_event_queue_depth") == 0
    assert sample_value(text, "snapfaas_event_queue_oldest_age_seconds") == 0


def test_metrics_token_reads_metrics_and_nothing_else(server, sequence) -> None:  # type: ignore[no-untyped-def]
    token = (server.data_dir / "metrics.token").read_text().strip()
    assert (server.data_dir / "metrics.token").stat().st_mode & 0o777 == 0o600
    status, _, text = scrape(server, token=token)
    assert status == 200 and sample_value(text, "snapfaas_invocations_total", function=NAME, version="1", outcome="success") == 1
    for bad in (token + "x", "", "not-the-token"):
        status, _, body = scrape(server, token=bad)
        assert status == 403, body
    status, _, body = scrape(server, signed=False)
    assert status == 403 and "Missing Authentication Token" in body
    # the token is no key: a Lambda route with it is refused
    request = urllib.request.Request(server.endpoint + "/2015-03-31/functions", headers={"Authorization": f"Bearer {token}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403


def test_a_deleted_functions_series_are_gone(lam, server, sequence) -> None:  # type: ignore[no-untyped-def]
    create(lam, "short-lived", {"app.py": APP}, Runtime="python3.11")
    lam.invoke(FunctionName="short-lived", Payload=b"{}")["Payload"].read()
    _, _, before = scrape(server)
    assert sample_value(before, "snapfaas_invocations_total", function="short-lived", version="$LATEST", outcome="success") == 1
    lam.delete_function(FunctionName="short-lived")
    _, _, after = scrape(server)
    assert 'function="short-lived"' not in after
    assert sample_value(after, "snapfaas_invocations_total", function=NAME, version="1", outcome="success") == 1
